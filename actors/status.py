"""StatusReporter: keeps ``$DATA_PATH/status.json`` for ``dockmon-agent healthcheck``/``status``.

Other actors tell it facts (connection state, events forwarded, actor restarts). It coalesces
them and rewrites the file atomically at most once a second, and at least every ``heartbeat``
seconds, so a reader can tell a live agent from a hung one by ``updated_at``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from actors.base import ActorContext, SupervisedActor
from messages.status import (
    ActorRestarted,
    AgentStopping,
    ConnectionStatus,
    DockerStatus,
    EventForwarded,
    FlushStatus,
)
from messages.wire import rfc3339_nano

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"


def write_json_atomic(path: Path, data: dict[str, Any], mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class StatusReporterActor(SupervisedActor):
    def __init__(
        self, ctx: ActorContext, *, data_path: str, version: str, heartbeat: float = 10.0
    ) -> None:
        super().__init__(ctx)
        self._path = Path(data_path) / STATUS_FILE
        self._heartbeat = heartbeat
        self._state: dict[str, Any] = {
            "version": version,
            "pid": os.getpid(),
            "started_at": rfc3339_nano(ctx.clock.time_ns()),
            "connected": False,
            "connected_since": None,
            "disconnected_since": rfc3339_nano(ctx.clock.time_ns()),
            "registrations": 0,
            "reconnects": 0,
            "outbox_depth": 0,
            "outbox_dropped": 0,
            "last_error": "",
            "last_event_at": None,
            "events_forwarded": 0,
            "actor_restarts": 0,
            "last_restarted_actor": None,
            "docker_reachable": None,
            "docker_error": "",
            "docker_unreachable_since": None,
            "stopped": False,
            "stopped_at": None,
            "stop_reason": "",
        }
        self._stop_reason = "stopped"
        self._dirty = True
        self._last_write = 0.0
        self._write_failed = False

    def on_start(self) -> None:
        self._flush()

    def _release(self) -> None:
        if self._dirty:
            with contextlib.suppress(OSError):
                self._write()

    def on_stop(self) -> None:
        """A clean stop (not a crash: that is on_failure) says so at once in the file."""
        now = rfc3339_nano(self.ctx.clock.time_ns())
        self._state.update(
            stopped=True, stopped_at=now, stop_reason=self._stop_reason, connected=False
        )
        if self._state.get("connected_since"):
            self._state.update(connected_since=None, disconnected_since=now)
        self._dirty = True
        self._release()

    def handle(self, message: Any) -> Any:
        match message:
            case ConnectionStatus():
                since = rfc3339_nano(message.since_ns)
                self._update(
                    connected=message.connected,
                    connected_since=since if message.connected else None,
                    disconnected_since=None if message.connected else since,
                    registrations=message.registrations,
                    reconnects=max(0, message.registrations - 1),
                    outbox_depth=message.outbox_depth,
                    outbox_dropped=message.outbox_dropped,
                    last_error=message.last_error,
                )
            case EventForwarded(at_ns=at_ns, total=total):
                self._update(last_event_at=rfc3339_nano(at_ns), events_forwarded=total)
            case ActorRestarted(child_id=child_id, total=total):
                self._update(actor_restarts=total, last_restarted_actor=child_id)
            case DockerStatus(reachable=reachable, since_ns=since_ns, error=error):
                self._update(
                    docker_reachable=reachable,
                    docker_error=error,
                    docker_unreachable_since=None if reachable else rfc3339_nano(since_ns),
                )
            case AgentStopping(reason=reason, exit_code=code):
                self._stop_reason = reason if not code else f"{reason} (exit code {code})"
            case FlushStatus():
                self._flush()
            case _:
                log.warning("StatusReporter ignored %s", type(message).__name__)
        return None

    def _update(self, **fields: Any) -> None:
        if self._state.get("connected") and fields.get("connected") is True:
            fields.pop("connected_since", None)  # still the same connection
        self._state.update(fields)
        if not self._dirty:
            self._dirty = True
            self.tell_self_later(1.0, FlushStatus())

    def _flush(self) -> None:
        now = self.ctx.clock.monotonic()
        if self._dirty or now - self._last_write >= self._heartbeat:
            try:
                self._write()
            except OSError as exc:
                if not self._write_failed:
                    log.error("cannot write %s: %s", self._path, exc.strerror or exc)
                self._write_failed = True
            else:
                self._write_failed = False
            self._last_write = now
            self._dirty = False
        self.tell_self_later(self._heartbeat, FlushStatus())

    def _write(self) -> None:
        state = dict(self._state, updated_at=rfc3339_nano(self.ctx.clock.time_ns()))
        write_json_atomic(self._path, state)


def read_status(data_path: str) -> dict[str, Any]:
    """The status file as written by a running agent; raises OSError/ValueError if unusable."""
    data = json.loads((Path(data_path) / STATUS_FILE).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("status file is not a JSON object")
    return data


def _age(stamp: str | None, now: float) -> float | None:
    if not stamp:
        return None
    return now - datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def health_verdict(
    status: dict[str, Any], *, unhealthy_after: float, stale_after: float, now: float | None = None
) -> tuple[bool, str]:
    """(healthy, reason) for Docker's HEALTHCHECK."""
    now = time.time() if now is None else now
    if status.get("stopped"):
        why = status.get("stop_reason") or "stopped"
        return False, f"the agent stopped at {status.get('stopped_at')} ({why})"
    updated = _age(status.get("updated_at"), now)
    if updated is None or updated > stale_after:
        return False, f"status file not updated for {updated or 0:.0f}s: the agent is not running"
    if status.get("docker_reachable") is False:
        return False, f"Docker is unreachable: {status.get('docker_error') or 'unknown error'}"
    if status.get("connected"):
        return True, "registered with DockMon"
    down = _age(status.get("disconnected_since"), now) or 0.0
    if down > unhealthy_after:
        reason = status.get("last_error") or "unknown"
        return False, f"not registered with DockMon for {down:.0f}s (last error: {reason})"
    return True, f"not registered for {down:.0f}s, within the {unhealthy_after:g}s grace period"
