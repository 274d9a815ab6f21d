"""The ``update_container`` flow (PROTOCOL §6) and recovery of interrupted updates.

Runs on a flow thread of the Updater (see actors/updater.py), never in an actor. Every step
that touches a container is preceded by a journal write (``$DATA_PATH/updates/<id12>.json``,
atomic, 0600), so that :func:`recover` can, on the next start, roll back an update that had not
yet passed its health gate, or finish one that had. A live flow holds ``<id12>.lock``
(``flock``); recovery skips journals whose lock is held, so it never races a running flow.

Guarantee: the old container is only deleted after the new one passed its health gate; until
then it is kept as ``<name>-dockmon-backup-<unix>`` and restored on any failure (running if and
only if it was running before).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from actors.flows import update_config as uc
from actors.flows.context import FlowContext
from actors.flows.pull_progress import PullError, PullProgress
from actors.runtime.fsio import write_atomic
from messages.references import short_id
from messages.roles import Role
from messages.status import WriteFailed
from messages.updates import UpdateContainer

log = logging.getLogger(__name__)

JOURNAL_VERSION = 1
BACKUP_MARK = "-dockmon-backup-"
TEMP_MARK = "-dockmon-temp-"
HEALTH_POLL_S = 2.0
STABILITY_S = 3.0
DEPENDENT_CHECK_S = 3.0
RESTORE_STOP_S = 10

# journal phases, in order; what recovery does depends on which group the phase is in
UNTOUCHED = frozenset({"pulling", "configuring"})
ROLL_BACK = frozenset({"backup", "creating", "starting", "health_check"})
ROLL_FORWARD = frozenset({"healthy", "dependents", "cleanup"})


class UpdateFailed(Exception):
    """A step failed; ``touched``: the old container was already stopped or renamed."""

    def __init__(self, message: str, *, touched: bool) -> None:
        super().__init__(message)
        self.touched = touched


class JournalWriteFailed(UpdateFailed):
    """The journal could not be written (DATA_PATH full or read-only): the update stops there,
    and the journal in memory stays what is on disk, so this run and a recovery agree."""


class RollbackFailed(Exception):
    """``retry``: worth trying again at the next start (False: the old container is gone)."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


def _docker_error(what: str, exc: BaseException) -> str:
    if isinstance(exc, docker.errors.APIError):
        explanation = exc.explanation or str(exc)
        if isinstance(explanation, bytes):
            explanation = explanation.decode("utf-8", "replace")
        return f"{what}: Error response from daemon: {explanation}"
    return f"{what}: {exc}"


# --------------------------------------------------------------------------------------------
# journal


class Journal:
    """One update's persisted state, guarded by an ``flock`` on a sibling lock file."""

    def __init__(self, directory: Path, key: str, lock_fd: int) -> None:
        self.directory = directory
        self.key = key
        self.path = directory / f"{key}.json"
        self._lock_fd: int | None = lock_fd
        self.state: dict[str, Any] = {}

    @classmethod
    def acquire(cls, directory: Path, key: str) -> Journal | None:
        """The journal of ``key``, locked; None if a live flow (or recovery) holds it."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(directory / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        return cls(directory, key, fd)

    def load(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error(
                "update journal %s is unreadable (%s); leaving it for inspection", self.path, exc
            )
            return None
        if not isinstance(data, dict):
            log.error("update journal %s is not an object; leaving it for inspection", self.path)
            return None
        self.state = data
        return data

    def save(self, **changes: Any) -> None:
        """Merge ``changes`` and write by the one atomic-write rule (fsio), mode 0600.

        Raises JournalWriteFailed (the state is left as it was) if the file cannot be written.
        """
        state = {**self.state, **changes}
        data = json.dumps(state, indent=1, sort_keys=True).encode()
        try:
            write_atomic(self.path, data, mode=0o600)
        except OSError as exc:
            phase = self.state.get("phase")
            raise JournalWriteFailed(
                f"cannot write the update journal {self.path}: {exc.strerror or exc} (is "
                "DATA_PATH full or read-only?)",
                touched=phase is not None and phase not in UNTOUCHED,
            ) from exc
        self.state.update(changes)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.state = {}

    def release(self) -> None:
        # The lock file stays: unlinking it would let two holders lock different inodes.
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


@contextlib.contextmanager
def _locked(directory: Path, key: str) -> Iterator[Journal | None]:
    journal = Journal.acquire(directory, key)
    try:
        yield journal
    finally:
        if journal is not None:
            journal.release()


# --------------------------------------------------------------------------------------------
# Docker helpers (all on the flow thread's own client)


class Docker:
    def __init__(self, api: docker.APIClient, fc: FlowContext) -> None:
        self.api = api
        self.fc = fc

    def sleep(self, seconds: float) -> None:
        if self.fc.cancelled.wait(seconds):
            raise UpdateFailed("update cancelled: the agent is shutting down", touched=True)

    def inspect(self, ref: str) -> dict[str, Any] | None:
        try:
            return dict(self.api.inspect_container(ref))
        except docker.errors.NotFound:
            return None

    def holder_of(self, name: str) -> dict[str, Any] | None:
        """The container called exactly ``name`` (inspect by name also matches id prefixes)."""
        for c in self.api.containers(all=True, filters={"name": f"^/{name}$"}):
            if f"/{name}" in (c.get("Names") or ()):
                return self.inspect(str(c["Id"]))
        return None

    def stop(self, ref: str, timeout: int) -> None:
        try:
            self.api.stop(ref, timeout=timeout)
        except docker.errors.NotFound:
            raise
        except (docker.errors.APIError, requests.RequestException) as exc:
            log.warning("%s; killing it", _docker_error(f"stopping {ref[:12]} failed", exc))
            with contextlib.suppress(docker.errors.APIError):
                self.api.kill(ref)

    def remove(self, ref: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_container(ref, force=True)

    def is_podman(self) -> bool:
        try:
            version = self.api.version()
        except (docker.errors.APIError, requests.RequestException):
            return False
        names = [str(c.get("Name", "")) for c in version.get("Components") or ()]
        names.append(str((version.get("Platform") or {}).get("Name", "")))
        return any("podman" in n.lower() for n in names)


def restore_backup(
    d: Docker, *, old_id: str, name: str, was_running: bool, new_id: str | None, new_image: str
) -> str:
    """§6 "Restore": the new container goes, the old one gets its name back and is started iff
    it was running. Returns a description; raises RollbackFailed."""
    problems: list[str] = []
    if new_id:
        try:
            d.remove(new_id)
        except (docker.errors.APIError, requests.RequestException) as exc:
            problems.append(_docker_error("removing the new container failed", exc))
    try:
        old = d.inspect(old_id)
        if old is None:
            raise RollbackFailed(f"the old container {old_id[:12]} no longer exists", retry=False)
        status = (old.get("State") or {}).get("Status")
        if status in ("running", "restarting", "dead"):
            with contextlib.suppress(docker.errors.APIError):
                d.api.kill(old_id)
        holder = d.holder_of(name)
        if holder is not None and holder["Id"] != old_id:
            image = str((holder.get("Config") or {}).get("Image") or "")
            if holder["Id"] == new_id or (not new_id and image == new_image):
                d.remove(str(holder["Id"]))
            else:
                raise RollbackFailed(
                    f"the name {name} is taken by container {holder['Id'][:12]}, which this "
                    "update did not create"
                )
        if uc.container_name(old) != name:
            d.api.rename(old_id, name)
        if was_running:
            d.api.start(old_id)
    except RollbackFailed as exc:
        raise RollbackFailed("; ".join([*problems, str(exc)]), retry=exc.retry) from exc
    except (docker.errors.APIError, requests.RequestException) as exc:
        raise RollbackFailed("; ".join([*problems, _docker_error("restore failed", exc)])) from exc
    if problems:
        raise RollbackFailed("; ".join(problems))
    return f"{name} restored ({'running' if was_running else 'stopped'})"


# --------------------------------------------------------------------------------------------
# the flow


def run(
    fc: FlowContext,
    request: UpdateContainer,
    *,
    report_id: str | None = None,
    checked: frozenset[str] | None = None,
) -> None:
    """Pull, recreate, health-gate, roll back on failure; report progress through ``fc.emit``.

    ``request.container_id`` is the container's full id (resolved by the Updater, which checked
    the policy on it); ``report_id`` is the 12-hex id every event carries (§5.5); ``checked``:
    the ids the policy was checked on (the container and its dependents then), if any.
    """
    key = short_id(request.container_id)
    report_id = report_id or key
    try:
        journal = Journal.acquire(fc.journal_dir, key)
    except OSError as exc:
        error = f"cannot create the update journal in {fc.journal_dir}: {exc.strerror or exc}"
        _journal_failed(fc, error)
        _progress(fc, report_id, "failed", f"{error}; the container was not touched")
        return
    try:
        if journal is None:
            _progress(
                fc, report_id, "failed", "another update or recovery of this container is running"
            )
            return
        stale = journal.load()
        if stale is not None:
            log.warning("found an interrupted update of %s; recovering it first", key)
            _recover_one(fc, journal, stale)
        _Update(fc, request, journal, report_id, checked).run()
    finally:
        if journal is not None:
            journal.release()


def _journal_failed(fc: FlowContext, error: str) -> None:
    """Counted in status.json (``journal_write_failures``); the flow reports it itself."""
    fc.tell(Role.STATUS, WriteFailed(what="journal", error=error))


def _progress(fc: FlowContext, report_id: str, stage: str, message: str) -> None:
    log.info("update %s: %s: %s", report_id, stage, message)
    fc.emit("update_progress", {"container_id": report_id, "stage": stage, "message": message})


class _Update:
    def __init__(
        self,
        fc: FlowContext,
        request: UpdateContainer,
        journal: Journal,
        report_id: str,
        checked: frozenset[str] | None = None,
    ) -> None:
        self.fc = fc
        self.req = request
        self.journal = journal
        self.report_id = report_id
        self.checked = checked
        self.d = Docker(fc.client(), fc)

    def progress(self, stage: str, message: str) -> None:
        _progress(self.fc, self.report_id, stage, message)

    def run(self) -> None:
        req = self.req
        log.info(
            "updating container %s to %s (stop timeout %ss, health timeout %ss)",
            self.report_id, req.new_image, req.stop_timeout, req.health_timeout,
        )  # fmt: skip
        self.journal.state = {}
        try:
            self.journal.save(
                version=JOURNAL_VERSION,
                phase="pulling",
                request_container_id=req.container_id,
                report_id=self.report_id,
                new_image=req.new_image,
                stop_timeout=req.stop_timeout,
                health_timeout=req.health_timeout,
            )
            self._run()
        except UpdateFailed as exc:
            if isinstance(exc, JournalWriteFailed):
                _journal_failed(self.fc, str(exc))
            self._fail(str(exc), touched=exc.touched)
        except Exception as exc:  # an unexpected bug must still bring the old container back
            log.exception("update of %s failed unexpectedly", self.report_id)
            touched = self.journal.state.get("phase") not in UNTOUCHED
            self._fail(f"unexpected error: {exc}", touched=touched)

    def _fail(self, error: str, *, touched: bool) -> None:
        state = self.journal.state
        if state.get("phase") in ROLL_FORWARD:
            # past the health gate the new container is the good one: never roll back to the
            # old one here; the journal stays and the next start finishes the update
            log.error("finishing the update of %s failed: %s", self.report_id, error)
            self.progress("failed", f"{error}; the update will be finished when the agent restarts")
            return
        if not touched:
            self.progress("failed", error)
            self.journal.discard()
            return
        log.warning("update of %s failed (%s); rolling back", self.report_id, error)
        try:
            restored = restore_backup(
                self.d,
                old_id=state["old_id"],
                name=state["name"],
                was_running=state["was_running"],
                new_id=state.get("new_id"),
                new_image=self.req.new_image,
            )
        except RollbackFailed as exc:
            if exc.retry:  # the journal stays: the next start retries the rollback
                log.error(
                    "ROLLBACK FAILED for %s: %s; journal kept in %s, retried at the next start",
                    state["name"], exc, self.journal.path,
                )  # fmt: skip
            else:
                log.error("ROLLBACK FAILED for %s: %s", state["name"], exc)
                self.journal.discard()
            self.progress("failed", f"{error}; rollback failed: {exc}")
            return
        self.journal.discard()
        self.progress("rollback", f"{error}; rolled back: {restored}")

    # ---------------------------------------------------------------- steps

    def _run(self) -> None:
        req = self.req
        self.progress("pulling", f"Pulling image {req.new_image}")
        self._pull()
        self.journal.save(phase="configuring")
        self.progress("configuring", "Reading container configuration")
        plan, old, dependents = self._configure()
        name = plan.name
        was_running = bool((old.get("State") or {}).get("Running"))
        backup_name = f"{name}{BACKUP_MARK}{self.fc.clock.time_ns() // 1_000_000_000}"
        self.journal.save(
            phase="backup",
            old_id=old["Id"],
            name=name,
            was_running=was_running,
            backup_name=backup_name,
            dependents=dependents,
        )
        self.progress("backup", "Stopping container and creating backup")
        self._backup(old["Id"], backup_name)
        new_id = self._create(plan)
        if was_running:
            self.journal.save(phase="starting")
            self.progress("starting", "Starting new container")
            try:
                self.d.api.start(new_id)
            except (docker.errors.APIError, requests.RequestException) as exc:
                raise UpdateFailed(
                    _docker_error("failed to start container", exc), touched=True
                ) from exc
            self.journal.save(phase="health_check")
            self.progress("health_check", "Waiting for container to be healthy")
            self._health_gate(new_id)
        else:
            self.progress(
                "starting", "Not starting the new container: the old one was stopped before"
            )
        self.journal.save(phase="healthy")
        finish(self.fc, self.d, self.journal)

    def _pull(self) -> None:
        req = self.req
        auth = None
        if req.registry_auth is not None and req.registry_auth.username:
            auth = {
                "username": req.registry_auth.username,
                "password": req.registry_auth.password.reveal(),
            }
        tracker = PullProgress(self.report_id, self.fc.clock.monotonic())
        try:
            stream = self.d.api.pull(req.new_image, stream=True, decode=True, auth_config=auth)
            for line in stream:
                payload = tracker.feed(line, self.fc.clock.monotonic())
                if payload is not None:
                    self.fc.emit("update_layer_progress", payload)
        except PullError as exc:
            raise UpdateFailed(f"failed to pull image: {exc}", touched=False) from exc
        except (docker.errors.APIError, requests.RequestException) as exc:
            raise UpdateFailed(_docker_error("failed to pull image", exc), touched=False) from exc
        log.info("pulled %s (%s)", req.new_image, tracker.last_status or "done")

    def _configure(self) -> tuple[uc.ContainerPlan, dict[str, Any], list[dict[str, Any]]]:
        req = self.req
        try:
            old = self.d.api.inspect_container(req.container_id)
        except (docker.errors.APIError, requests.RequestException) as exc:
            raise UpdateFailed(
                _docker_error("failed to inspect container", exc), touched=False
            ) from exc
        try:
            old_image = self.d.api.inspect_image(old["Image"])  # the immutable image id
        except (docker.errors.APIError, requests.RequestException) as exc:
            log.warning(
                "%s; no label/env filtering", _docker_error("old image not inspectable", exc)
            )
            old_image = {}
        try:
            self.d.api.inspect_image(req.new_image)
        except (docker.errors.APIError, requests.RequestException) as exc:
            raise UpdateFailed(
                _docker_error("failed to inspect new image", exc), touched=False
            ) from exc
        name = uc.container_name(old)
        mode = str((old.get("HostConfig") or {}).get("NetworkMode") or "")
        mode_name = None
        if mode.startswith("container:"):
            target = self.d.inspect(mode.removeprefix("container:"))
            mode_name = uc.container_name(target) if target else None
        plan = uc.build_plan(
            old, old_image, req.new_image, network_mode_name=mode_name, podman=self.d.is_podman()
        )
        dependents = []
        try:
            for summary in self.d.api.containers(all=True):
                if summary["Id"] == old["Id"]:
                    continue
                dep = self.d.inspect(str(summary["Id"]))
                if dep is not None and uc.depends_on(dep, name, old["Id"]):
                    dependents.append(
                        {
                            "id": dep["Id"],
                            "name": uc.container_name(dep),
                            "was_running": bool((dep.get("State") or {}).get("Running")),
                            "state": "pending",
                        }
                    )
        except (docker.errors.APIError, requests.RequestException) as exc:
            log.warning("%s; continuing", _docker_error("failed to find dependent containers", exc))
        unchecked = [d["name"] for d in dependents if self.checked and d["id"] not in self.checked]
        if unchecked:  # joined after the policy check: recreating them was never allowed
            raise UpdateFailed(
                f"container(s) {', '.join(unchecked)} started sharing the network namespace of "
                f"{name} after the policy check; nothing was changed, try again",
                touched=False,
            )
        if dependents:
            log.info(
                "%d container(s) share %s's network namespace: %s",
                len(dependents), name, ", ".join(d["name"] for d in dependents),
            )  # fmt: skip
        return plan, old, dependents

    def _backup(self, old_id: str, backup_name: str) -> None:
        try:
            self.d.api.stop(old_id, timeout=self.req.stop_timeout)
        except (docker.errors.APIError, requests.RequestException) as exc:
            log.warning("%s; continuing", _docker_error("stopping the old container failed", exc))
        try:
            self.d.api.rename(old_id, backup_name)
        except (docker.errors.APIError, requests.RequestException) as exc:
            raise UpdateFailed(
                _docker_error("failed to rename container to backup", exc), touched=True
            ) from exc
        log.info("old container %s kept as %s", old_id[:12], backup_name)

    def _create(self, plan: uc.ContainerPlan) -> str:
        self.journal.save(phase="creating")
        self.progress("creating", "Creating new container")
        modern = uc.api_version_at_least(self.d.api.api_version, uc.NETWORKING_CONFIG_API)
        try:
            created = self.d.api.create_container_from_config(plan.create_body(modern), plan.name)
        except (docker.errors.APIError, requests.RequestException) as exc:
            raise UpdateFailed(
                _docker_error("failed to create container", exc), touched=True
            ) from exc
        new_id = str(created["Id"])
        self.journal.save(new_id=new_id)
        log.info("created new container %s", new_id[:12])
        nets = plan.networks
        if not modern and nets.primary and nets.primary_endpoint:
            # Created containers are attached to their NetworkMode network with default
            # settings, and connecting again is a silent no-op: replace that endpoint.
            try:
                self.d.api.disconnect_container_from_network(new_id, nets.primary)
                self._connect(new_id, nets.primary, nets.primary_endpoint)
            except (docker.errors.APIError, requests.RequestException) as exc:
                raise UpdateFailed(
                    _docker_error("failed to connect primary network", exc), touched=True
                ) from exc
        for network, endpoint in nets.extra:
            try:
                self._connect(new_id, network, endpoint)
            except (docker.errors.APIError, requests.RequestException) as exc:
                log.warning("%s (continuing)", _docker_error(f"failed to connect {network}", exc))
        return new_id

    def _connect(self, container: str, network: str, endpoint: dict[str, Any]) -> None:
        ipam = endpoint.get("IPAMConfig") or {}
        self.d.api.connect_container_to_network(
            container,
            network,
            aliases=endpoint.get("Aliases"),
            links=endpoint.get("Links"),
            ipv4_address=ipam.get("IPv4Address"),
            ipv6_address=ipam.get("IPv6Address"),
        )

    def _health_gate(self, new_id: str) -> None:
        timeout = float(self.req.health_timeout)
        clock = self.fc.clock
        started = clock.monotonic()
        stable = False
        while True:
            try:
                inspect = self.d.api.inspect_container(new_id)
            except (docker.errors.APIError, requests.RequestException) as exc:
                raise UpdateFailed(
                    "health check failed: " + _docker_error("failed to inspect container", exc),
                    touched=True,
                ) from exc
            elapsed = clock.monotonic() - started
            decision = uc.judge_health(inspect, elapsed, timeout, stable=stable)
            if decision.verdict is uc.Verdict.PASS:
                log.info("%s passed its health gate: %s", new_id[:12], decision.reason)
                return
            if decision.verdict is uc.Verdict.FAIL:
                raise UpdateFailed(f"health check failed: {decision.reason}", touched=True)
            if decision.verdict is uc.Verdict.STABILITY:
                self.d.sleep(STABILITY_S)
                stable = True
                continue
            if elapsed >= timeout:
                raise UpdateFailed(
                    f"health check failed: health check timeout after {timeout:g}s", touched=True
                )
            self.d.sleep(max(0.0, min(HEALTH_POLL_S, timeout - elapsed)))


def finish(fc: FlowContext, d: Docker, journal: Journal) -> None:
    """After the health gate: dependents, backup removal, ``update_complete``. Also used by
    recovery to finish an update interrupted past its health gate."""
    state = journal.state
    report_id = state["report_id"]
    new_id = state["new_id"]
    name = state["name"]
    new = d.inspect(new_id)
    parent_running = bool(new and (new.get("State") or {}).get("Running"))
    dependents = state.get("dependents") or []
    if dependents:
        journal.save(phase="dependents")
        _progress(
            fc, report_id, "dependents", f"Recreating {len(dependents)} dependent container(s)"
        )
        for dep in dependents:
            if dep.get("state") not in ("done", "failed"):
                _recreate_dependent(fc, d, journal, dep, new_id, parent_running)
    failed = [dep["name"] for dep in dependents if dep.get("state") == "failed"]
    journal.save(phase="cleanup")
    _progress(fc, report_id, "cleanup", "Removing backup container")
    try:
        d.remove(state["old_id"])
    except (docker.errors.APIError, requests.RequestException) as exc:
        log.error(
            "%s: remove %s by hand", _docker_error("removing the backup container failed", exc),
            state.get("backup_name"),
        )  # fmt: skip
    _progress(fc, report_id, "completed", f"Update complete, new container: {new_id[:12]}")
    payload: dict[str, Any] = {
        "old_container_id": report_id,  # the 12-char id the backend waits for (§6)
        "new_container_id": new_id[:12],
        "container_name": name,
    }
    if failed:
        payload["failed_dependents"] = failed
    fc.emit("update_complete", payload)
    journal.discard()
    log.info("container %s updated: %s -> %s", name, state["old_id"][:12], new_id[:12])


def _recreate_dependent(
    fc: FlowContext,
    d: Docker,
    journal: Journal,
    dep: dict[str, Any],
    new_parent_id: str,
    parent_running: bool,
) -> None:
    """§6 step 10 for one dependent; its sub-state is journaled so recovery can resume it."""
    name = dep["name"]
    stop_timeout = int(journal.state.get("stop_timeout") or 30)
    if dep.get("state") in ("renamed", "created"):  # interrupted half-way: start over
        _restore_dependent(d, dep)
    try:
        old = d.inspect(dep["id"])
        if old is None:
            raise RuntimeError("it no longer exists")
        plan = uc.dependent_plan(old, new_parent_id, podman=d.is_podman())
        dep["state"] = "stopping"
        journal.save()
        try:
            d.stop(dep["id"], stop_timeout)
        except docker.errors.NotFound as exc:
            raise RuntimeError("it no longer exists") from exc
        temp = f"{name}{TEMP_MARK}{fc.clock.time_ns() // 1_000_000_000}"
        d.api.rename(dep["id"], temp)
        dep.update(state="renamed", temp_name=temp)
        journal.save()
        created = d.api.create_container_from_config(plan.create_body(False), name)
        dep.update(state="created", new_id=str(created["Id"]))
        journal.save()
        if dep.get("was_running") and parent_running:
            d.api.start(dep["new_id"])
            d.sleep(DEPENDENT_CHECK_S)
            check = d.inspect(dep["new_id"])
            if not check or not (check.get("State") or {}).get("Running"):
                raise RuntimeError("the new container is not running 3 s after its start")
        d.remove(dep["id"])
        dep["state"] = "done"
        journal.save()
        log.info("dependent %s recreated as %s", name, dep["new_id"][:12])
    except (RuntimeError, docker.errors.APIError, requests.RequestException) as exc:
        log.error("recreating dependent %s failed: %s; restoring it", name, exc)
        try:
            _restore_dependent(d, dep)
        except (docker.errors.APIError, requests.RequestException) as err:
            log.error("restoring dependent %s failed too: %s", name, err)
        dep["state"] = "failed"
        journal.save()


def _restore_dependent(d: Docker, dep: dict[str, Any]) -> None:
    name = dep["name"]
    if dep.get("new_id"):
        d.remove(dep["new_id"])
    holder = d.holder_of(name)
    if holder is not None and holder["Id"] != dep["id"]:
        d.remove(str(holder["Id"]))
    old = d.inspect(dep["id"])
    if old is None:
        return
    if uc.container_name(old) != name:
        d.api.rename(dep["id"], name)
    if dep.get("was_running") and not (old.get("State") or {}).get("Running"):
        with contextlib.suppress(docker.errors.APIError):
            d.api.start(dep["id"])
    dep.update(state="pending", new_id=None, temp_name=None)


# --------------------------------------------------------------------------------------------
# recovery


def recover(fc: FlowContext) -> None:
    """Finish or roll back updates a crash interrupted (journals in ``fc.journal_dir``)."""
    directory = fc.journal_dir
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*.json")):
        with _locked(directory, path.stem) as journal:
            if journal is None:
                log.info("update journal %s belongs to a running update", path.name)
                continue
            state = journal.load()
            if state is not None:
                _recover_one(fc, journal, state)
    _report_orphan_backups(fc, directory)


def _recover_one(fc: FlowContext, journal: Journal, state: dict[str, Any]) -> None:
    phase = str(state.get("phase") or "")
    report_id = str(state.get("report_id") or journal.key)
    what = f"update of {state.get('name') or report_id} to {state.get('new_image')}"
    if phase in UNTOUCHED:
        log.warning("RECOVERY: the %s was interrupted before any container was touched", what)
        _progress(
            fc, report_id, "failed",
            "Update interrupted by an agent restart before any container was changed",
        )  # fmt: skip
        journal.discard()
        return
    try:
        d = Docker(fc.client(), fc)
        if phase in ROLL_FORWARD and d.inspect(str(state.get("new_id") or "")) is not None:
            log.warning(
                "RECOVERY: the %s was interrupted after its health gate (phase %s); finishing it",
                what, phase,
            )  # fmt: skip
            finish(fc, d, journal)
            log.warning("RECOVERY: the %s was finished", what)
            return
        if phase not in ROLL_BACK | ROLL_FORWARD:
            log.error("update journal %s has unknown phase %r; leaving it", journal.path, phase)
            return
        log.warning("RECOVERY: the %s was interrupted in phase %s; rolling back", what, phase)
        restored = restore_backup(
            d,
            old_id=state["old_id"],
            name=state["name"],
            was_running=bool(state.get("was_running")),
            new_id=state.get("new_id"),
            new_image=str(state.get("new_image") or ""),
        )
    except (RollbackFailed, docker.errors.APIError, requests.RequestException, KeyError) as exc:
        if isinstance(exc, RollbackFailed) and not exc.retry:
            log.error("RECOVERY FAILED for the %s: %s", what, exc)
            journal.discard()
        else:
            log.error(
                "RECOVERY FAILED for the %s: %s; journal %s kept, retried at the next start",
                what, exc, journal.path,
            )  # fmt: skip
        _progress(
            fc, report_id, "failed",
            f"Update interrupted by an agent restart; rollback failed: {exc}",
        )  # fmt: skip
        return
    journal.discard()
    log.warning("RECOVERY: the %s was rolled back: %s", what, restored)
    _progress(
        fc, report_id, "rollback",
        f"Update interrupted by an agent restart during {phase}; rolled back: {restored}",
    )  # fmt: skip


def _report_orphan_backups(fc: FlowContext, directory: Path) -> None:
    """Backup containers that no journal accounts for (e.g. left by another agent) are never
    touched, but they are logged at every start so they do not go unnoticed."""
    known: set[str] = set()
    for path in directory.glob("*.json"):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            known.add(str(json.loads(path.read_text(encoding="utf-8")).get("backup_name")))
    try:
        containers = fc.client().containers(all=True)
    except (docker.errors.APIError, requests.RequestException) as exc:
        log.warning("cannot list containers to look for leftover update backups: %s", exc)
        return
    for c in containers:
        for name in c.get("Names") or ():
            name = str(name).lstrip("/")
            if BACKUP_MARK in name and name not in known:
                log.warning(
                    "container %s (%s) looks like a backup left by an interrupted update and no "
                    "journal of this agent covers it: check it, then rename it back or remove it",
                    name, str(c["Id"])[:12],
                )  # fmt: skip
