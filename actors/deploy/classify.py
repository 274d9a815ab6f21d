"""Is each service of a deployed stack working? Pure rules over container snapshots.

The Go agent takes one snapshot right after ``compose up`` and calls a container healthy when
its status text says it is up (PROTOCOL §8.1 step 6): a crash-looping ``restart: always``
container that happens to be between two crashes counts as healthy, and with
``wait_for_healthy`` a one-shot job that exited 0 keeps it waiting for the whole health timeout.

Here a run *observes* the stack for a short settle window (and, with ``wait_for_healthy``, up to
the health timeout): every poll judges each container OK, FAILED or PENDING, and the
observation ends as soon as nothing is PENDING.

* FAILED: it restarted during the observation (a crash loop), it is restarting, it exited with
  a non-zero code, its healthcheck says unhealthy (while waiting for health: once the health
  timeout is over), it never started, or an exited container with ``always``/``unless-stopped``
  (it will be restarted: not done).
* OK: running with a passing healthcheck; running without one and up for the settle window;
  exited 0 with restart policy ``""``, ``no`` or ``on-failure`` (a one-shot job that is done);
  without ``wait_for_healthy``, running with the healthcheck still starting (Go's rule: "Up …
  (health: starting)" counts as up).
* PENDING otherwise (up for less than the settle window; health starting or failing while
  waiting for health).

A container still PENDING when the observation ends is FAILED, with the reason.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from messages.records import record

#: restart policies for which an exit with code 0 means "done" (§8.1 step 6)
ONE_SHOT_POLICIES = frozenset({"", "no", "on-failure"})
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"
ONEOFF_LABEL = "com.docker.compose.oneoff"
_FRACTION = re.compile(r"\.(\d+)")


def parse_docker_time(text: str) -> float | None:
    """Docker's RFC 3339 with nanoseconds -> epoch seconds (None for the zero time)."""
    if not text or text.startswith("0001-"):
        return None
    value = _FRACTION.sub(lambda m: "." + m.group(1)[:6], text.replace("Z", "+00:00"))
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


@record
class ContainerState:
    """What classification needs of one container (from Docker's list + inspect)."""

    id: str
    name: str
    service: str
    image: str
    status: str  # Docker's text: "Up 5 seconds (healthy)", "Exited (1) 2 seconds ago"
    state: str  # created | running | restarting | exited | paused | dead | removing
    exit_code: int = 0
    restart_policy: str = ""
    restart_count: int = 0
    started_at: float | None = None
    health: str = ""  # "" (no healthcheck) | starting | healthy | unhealthy
    oom_killed: bool = False
    number: int = 1
    oneoff: bool = False

    @staticmethod
    def from_docker(summary: Mapping[str, Any], inspect: Mapping[str, Any]) -> ContainerState:
        labels = summary.get("Labels") or {}
        state = inspect.get("State") or {}
        host = inspect.get("HostConfig") or {}
        names = summary.get("Names") or [inspect.get("Name", "")]
        try:
            number = int(labels.get(NUMBER_LABEL, "1"))
        except ValueError:
            number = 1
        return ContainerState(
            id=str(summary.get("Id") or inspect.get("Id") or ""),
            name=str(names[0] if names else "").lstrip("/"),
            service=str(labels.get(SERVICE_LABEL, "")) or "unknown",
            image=str((inspect.get("Config") or {}).get("Image") or summary.get("Image") or ""),
            status=str(summary.get("Status") or ""),
            state=str(state.get("Status") or summary.get("State") or ""),
            exit_code=int(state.get("ExitCode") or 0),
            restart_policy=str((host.get("RestartPolicy") or {}).get("Name") or ""),
            restart_count=int(inspect.get("RestartCount") or 0),
            started_at=parse_docker_time(str(state.get("StartedAt") or "")),
            health=str((state.get("Health") or {}).get("Status") or ""),
            oom_killed=bool(state.get("OOMKilled")),
            number=number,
            oneoff=str(labels.get(ONEOFF_LABEL, "False")) == "True",
        )


def go_healthy(status: str) -> bool:
    """The Go agent's status rule (§8.1 step 6), used for the no-snapshot-history cases."""
    text = status.lower()
    if "unhealthy" in text:
        return False
    return text in ("running", "up") or text.startswith("up ") or "healthy" in text


class Verdict(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    PENDING = "pending"


@record
class Judgement:
    verdict: Verdict
    reason: str = ""


def judge(
    c: ContainerState,
    *,
    baseline_restarts: int,
    now: float,
    settle_s: float,
    waiting: bool,
) -> Judgement:
    """One container at one poll (see the module docstring for the rules)."""
    restarts = c.restart_count - baseline_restarts
    last_exit = f", last exit code {c.exit_code}" if c.exit_code else ""
    if c.state == "restarting" or restarts > 0:
        times = f"{restarts} time{'s' if restarts != 1 else ''}" if restarts > 0 else "again"
        return Judgement(
            Verdict.FAILED, f"crash loop: restarted {times} since the deploy{last_exit}"
        )
    if c.oom_killed:
        return Judgement(Verdict.FAILED, "killed for running out of memory")
    if c.state in ("exited", "dead"):
        if c.exit_code != 0:
            return Judgement(Verdict.FAILED, f"exited with code {c.exit_code}")
        if c.restart_policy in ONE_SHOT_POLICIES:
            return Judgement(Verdict.OK, "completed")
        return Judgement(
            Verdict.FAILED, f"exited although its restart policy is {c.restart_policy}"
        )
    if c.state == "created":
        return Judgement(Verdict.PENDING, "created but not started")
    if c.state == "paused":
        return Judgement(Verdict.FAILED, "paused")
    if c.state != "running":
        return Judgement(Verdict.FAILED, f"state {c.state or 'unknown'}")
    if c.health == "unhealthy":  # it may still recover: worth waiting for when asked to
        return Judgement(Verdict.PENDING if waiting else Verdict.FAILED, "healthcheck failing")
    if c.health == "healthy":
        return Judgement(Verdict.OK)
    if c.health == "starting":
        return Judgement(Verdict.PENDING if waiting else Verdict.OK, "health: starting")
    up_for = now - c.started_at if c.started_at is not None else settle_s
    if up_for < settle_s:
        return Judgement(Verdict.PENDING, f"up for {max(0.0, up_for):.1f}s")
    return Judgement(Verdict.OK)


@record
class ServiceOutcome:
    service: str
    container: ContainerState
    judgement: Judgement


def judge_all(
    containers: Iterable[ContainerState],
    *,
    baselines: Mapping[str, int],
    now: float,
    settle_s: float,
    waiting: bool,
) -> list[ServiceOutcome]:
    """One outcome per service (oneoff containers ignored): its worst replica, by number."""
    worst: dict[str, ServiceOutcome] = {}
    rank = {Verdict.FAILED: 0, Verdict.PENDING: 1, Verdict.OK: 2}
    for c in sorted(containers, key=lambda c: (c.service, c.number, c.name)):
        if c.oneoff:
            continue
        j = judge(
            c,
            baseline_restarts=baselines.get(c.id, 0),
            now=now,
            settle_s=settle_s,
            waiting=waiting,
        )
        known = worst.get(c.service)
        if known is None or rank[j.verdict] < rank[known.judgement.verdict]:
            worst[c.service] = ServiceOutcome(c.service, c, j)
    return [worst[name] for name in sorted(worst)]


def settled(outcomes: Iterable[ServiceOutcome]) -> bool:
    return all(o.judgement.verdict is not Verdict.PENDING for o in outcomes)


def _status_for(o: ServiceOutcome) -> str:
    """Docker's status text, unless it would call a failed container up (a crash loop caught
    between two restarts): then say what is really happening."""
    c = o.container
    if o.judgement.verdict is Verdict.FAILED and go_healthy(c.status):
        return f"Restarting ({c.exit_code}) ({o.judgement.reason})"
    return c.status or c.state


def service_entry(o: ServiceOutcome) -> dict[str, Any]:
    """One ``services{}`` value of ``deploy_complete`` (§5.7)."""
    c = o.container
    entry: dict[str, Any] = {
        "container_id": c.id[:12],
        "container_name": c.name,
        "image": c.image,
        "status": _status_for(o),
    }
    if c.restart_policy:
        entry["restart_policy"] = c.restart_policy
    if c.exit_code:
        entry["exit_code"] = c.exit_code
    return entry


def _failure_detail(o: ServiceOutcome, *, timed_out: bool) -> str:
    reason = o.judgement.reason
    if o.judgement.verdict is Verdict.PENDING:
        reason = f"not ready {'within the health timeout' if timed_out else 'in time'} ({reason})"
    return f"{o.service}: {_status_for(o)}" + (f" ({reason})" if reason else "")


def outcome_payload(
    deployment_id: str,
    action: str,
    outcomes: list[ServiceOutcome],
    *,
    timed_out: bool = False,
) -> dict[str, Any]:
    """The ``deploy_complete`` payload for a finished observation (§5.7, §8.1 step 7).

    Error texts are the backend's: "Partial deployment: N/M services running. Failed: …" and
    "All services failed to start: …", failures joined with "; ".
    """
    payload: dict[str, Any] = {"deployment_id": deployment_id, "action": action}
    ok = [o for o in outcomes if o.judgement.verdict is Verdict.OK]
    failed = [o for o in outcomes if o.judgement.verdict is not Verdict.OK]
    details = "; ".join(_failure_detail(o, timed_out=timed_out) for o in failed)
    if not failed:
        payload["success"] = True
    elif ok:
        payload["success"] = False
        payload["partial_success"] = True
    else:
        payload["success"] = False
    if outcomes:
        payload["services"] = {o.service: service_entry(o) for o in outcomes}
    if failed:
        payload["failed_services"] = [o.service for o in failed]
        payload["error"] = (
            f"Partial deployment: {len(ok)}/{len(outcomes)} services running. Failed: {details}"
            if ok
            else f"All services failed to start: {details}"
        )
    return payload


def failure_payload(deployment_id: str, action: str, error: str) -> dict[str, Any]:
    """A ``deploy_complete`` for a run that failed before there was anything to classify."""
    return {"deployment_id": deployment_id, "action": action, "success": False, "error": error}


def success_payload(deployment_id: str, action: str) -> dict[str, Any]:
    return {"deployment_id": deployment_id, "action": action, "success": True}
