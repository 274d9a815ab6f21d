"""StatusReporter: keeps ``$DATA_PATH/status.json`` for ``dockmon-agent healthcheck``/``status``.

Other actors tell it facts (connection state, events forwarded, actor restarts, writes in
DATA_PATH that failed soft). It coalesces them and rewrites the file atomically at most once a
second, and at least every ``heartbeat`` seconds, so a reader can tell a live agent from a hung
one by ``updated_at``. Exactly one timer is pending at any time (the earliest write due), so
timers and mailbox traffic stay flat however long the agent runs.

A full or read-only DATA_PATH never stops it: a failed write is logged once (then once an hour
while it keeps failing), counted in ``status_write_failures`` and retried at the next flush.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, TypeAlias, assert_never

from actors.base import ActorContext, SupervisedActor, TimerHandle

# the status file's reading and verdict live apart so that ``healthcheck`` loads no actor
from actors.rules.health import STATUS_FILE as STATUS_FILE
from actors.rules.health import health_verdict as health_verdict
from actors.rules.health import read_status as read_status
from actors.runtime.fsio import write_json_atomic
from messages.status import (
    ActorRestarted,
    AgentStopping,
    ConnectionStatus,
    DockerStatus,
    EventForwarded,
    FlushStatus,
    WriteFailed,
)
from messages.timefmt import rfc3339_nano

log = logging.getLogger(__name__)

#: every message this actor accepts (besides Ping); anything else is logged and dropped
Inbox: TypeAlias = (
    ConnectionStatus
    | EventForwarded
    | ActorRestarted
    | WriteFailed
    | DockerStatus
    | AgentStopping
    | FlushStatus
)
#: writes in DATA_PATH that fail soft, each counted as ``<kind>_write_failures``
SOFT_WRITES = ("audit", "journal", "status")
#: a write that keeps failing is logged again at most this often
FAILURE_LOG_INTERVAL = 3600.0


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
            **{f"{kind}_write_failures": 0 for kind in SOFT_WRITES},
            "last_write_error": "",
            "docker_reachable": None,
            "docker_error": "",
            "docker_unreachable_since": None,
            "stopped": False,
            "stopped_at": None,
            "stop_reason": "",
        }
        self._stop_reason = "stopped"
        self._dirty = True
        self._last_write = -float("inf")
        self._failure_logged = -float("inf")  # when a failing status write was last logged
        self._timer: TimerHandle | None = None
        self._timer_due = float("inf")
        self._timer_seq = 0

    def on_start(self) -> None:
        self._flush()

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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

    def handle(self, message: object) -> Any:
        if not isinstance(message, Inbox):
            log.warning("StatusReporter ignored %s", type(message).__name__)
            return None
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
            case WriteFailed(what=what, error=error):
                self._count_failure(what, error)
            case DockerStatus(reachable=reachable, since_ns=since_ns, error=error):
                self._update(
                    docker_reachable=reachable,
                    docker_error=error,
                    docker_unreachable_since=None if reachable else rfc3339_nano(since_ns),
                )
            case AgentStopping(reason=reason, exit_code=code):
                self._stop_reason = reason if not code else f"{reason} (exit code {code})"
            case FlushStatus(seq=seq) if seq == self._timer_seq:
                self._timer = None
                self._flush()
            case FlushStatus():
                pass  # from a timer that was replaced by an earlier one
            case _:
                assert_never(message)
        return None

    def _update(self, **fields: Any) -> None:
        if self._state.get("connected") and fields.get("connected") is True:
            fields.pop("connected_since", None)  # still the same connection
        self._state.update(fields)
        self._dirty = True
        # at most one write a second: at once if the last one is older than that
        self._arm(self._last_write + 1.0 - self.ctx.clock.monotonic())

    def _count_failure(self, what: str, error: str) -> None:
        key = f"{what}_write_failures"
        self._update(**{key: int(self._state.get(key) or 0) + 1, "last_write_error": error})

    def _arm(self, delay: float) -> None:
        """Make sure a flush is due within ``delay`` seconds, keeping a single pending timer."""
        due = self.ctx.clock.monotonic() + max(0.0, delay)
        if self._timer is not None:
            if self._timer_due <= due:
                return
            self._timer.cancel()
        self._timer_seq += 1
        self._timer_due = due
        self._timer = self.tell_self_later(max(0.0, delay), FlushStatus(seq=self._timer_seq))

    def _flush(self) -> None:
        now = self.ctx.clock.monotonic()
        if self._dirty or now - self._last_write >= self._heartbeat:
            try:
                self._write()
            except OSError as exc:
                self._write_failed(now, exc)
            else:
                if self._failure_logged > -float("inf"):
                    log.info("%s is written again", self._path)
                    self._failure_logged = -float("inf")
            self._last_write = now
            self._dirty = False
        self._arm(self._heartbeat)

    def _write_failed(self, now: float, exc: OSError) -> None:
        error = f"{self._path}: {exc.strerror or exc}"
        if now - self._failure_logged >= FAILURE_LOG_INTERVAL:
            log.error("cannot write %s; the agent keeps running (retried every %gs)", error,
                      self._heartbeat)  # fmt: skip
            self._failure_logged = now
        self._state["status_write_failures"] = int(self._state["status_write_failures"]) + 1
        self._state["last_write_error"] = error

    def _write(self) -> None:
        state = dict(self._state, updated_at=rfc3339_nano(self.ctx.clock.time_ns()))
        write_json_atomic(self._path, state, mode=0o644, indent=2)
