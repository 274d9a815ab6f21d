"""Updater: runs ``update_container`` and ``self_update`` detached from the command.

Each request is acknowledged at once; the flow then runs on a thread the actor starts, reports
through ``EventOut`` messages to the Connection (delivered on whatever connection is live; kept
in the outbox while disconnected), and journals its state in ``$DATA_PATH`` so a crash midway can
be finished or rolled back by the next start. Flows outlive a restart of this actor: the
:class:`FlowRegistry` (held by the supervisor's factory) knows which ones are still running.

The flows' code (actors/flows/container_update.py, self_update.py: 0.5 MB) is imported by the
first flow thread that needs it: at start only if an update directory is there to recover,
after a registration only if a hand-over file is there to finish.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias, assert_never

import docker
import pykka

from actors.base import ActorContext, SupervisedActor
from actors.commands.tools import describe_docker_error
from actors.flows.context import CLEANUP_FILE, FlowContext, FlowRegistry, UpdaterSettings
from actors.rules.policy import Guard, Policy, Refused
from actors.runtime.docker_client import client_factory as docker_clients
from messages.common import RawJson
from messages.docker import CommandFailed, CommandSucceeded
from messages.outbound import LinkStateChanged
from messages.roles import Role
from messages.updates import FlowFinished, SelfUpdate, UpdateContainer

log = logging.getLogger(__name__)

#: every message this actor accepts (besides Ping); anything else is logged and dropped
Inbox: TypeAlias = UpdateContainer | SelfUpdate | LinkStateChanged | FlowFinished


_ID12 = re.compile(r"[0-9a-f]{12}")


class UpdaterActor(SupervisedActor):
    def __init__(
        self,
        ctx: ActorContext,
        *,
        settings: UpdaterSettings,
        flows: FlowRegistry,
        client_factory: Callable[[], docker.APIClient] | None = None,
        policy: Policy | None = None,
    ) -> None:
        super().__init__(ctx)
        self._settings = settings
        self._flows = flows
        self._guard = Guard(policy or Policy(), settings.own_container_id)
        self._client_factory = client_factory or docker_clients(
            settings.docker_host, timeout=120, api_version=settings.docker_api_version
        )
        self._threads: dict[str, threading.Thread] = {}

    def on_start(self) -> None:
        self._spawn("recover", "recovery", _recover)

    def _release(self) -> None:
        pass  # flow threads are daemon threads with their own journals; they outlive us

    def handle(self, message: object) -> Any:
        if not isinstance(message, Inbox):
            log.warning("Updater ignored %s", type(message).__name__)
            return None
        match message:
            case UpdateContainer():
                self._update_container(message)
            case SelfUpdate():
                self._self_update(message)
            case LinkStateChanged(connected=True):
                self._spawn("self-update-handover", "handover", _finish_handover)
            case LinkStateChanged():
                pass
            case FlowFinished(flow_id=flow_id):
                self._threads.pop(flow_id, None)
            case _:
                assert_never(message)
        return None

    def _reply(self, request_id: str, result: dict[str, Any] | None, error: str = "") -> None:
        reply = (
            CommandFailed(request_id=request_id, error=error)
            if error
            else CommandSucceeded(request_id=request_id, payload=RawJson.of(result))
        )
        self.ctx.peers.tell(Role.CONNECTION, reply)

    def _update_container(self, msg: UpdateContainer) -> None:
        own = self._settings.own_container_id
        if own and msg.container_id[:12] == own[:12]:  # known without asking Docker
            self._reply(
                msg.request_id,
                None,
                f"refusing to update the agent's own container ({own[:12]}) with "
                "update_container; use self_update",
            )
            return
        guard, flows = self._guard, self._flows
        self._spawn(None, "update", lambda fc: _start_update(fc, guard, flows, msg))

    def _self_update(self, msg: SelfUpdate) -> None:
        from actors.flows import self_update

        error = self_update.precheck(self._settings, msg)
        if error:
            log.warning(
                "refused DockMon's self_update (to %s, version %s): %s",
                msg.image or "?",
                msg.version or "?",
                error,
            )
            self._reply(msg.request_id, None, error)
            return
        if self._flows.busy("self"):
            self._reply(msg.request_id, None, "a self-update is already in progress")
            return
        guard, flows = self._guard, self._flows
        self._spawn(None, "self-update", lambda fc: _start_self_update(fc, guard, flows, msg))

    def _spawn(self, key: str | None, kind: str, body: Callable[[FlowContext], None]) -> None:
        """Run ``body`` on a flow thread; ``key``: claimed first (None: the body claims)."""
        flow_id = f"{kind}-{uuid.uuid4().hex[:8]}"
        if key is not None and not self._flows.claim(key, flow_id):
            log.info("%s for %s not started: another flow holds it", kind, key)
            return
        fc = FlowContext(
            self._settings, self.ctx.peers, self.ctx.clock, flow_id, self._client_factory
        )
        ref = self.actor_ref

        def target() -> None:
            try:
                body(fc)
            except Exception:
                log.exception("%s flow %s failed unexpectedly", kind, flow_id)
            finally:
                fc.close()
                self._flows.release(flow_id)
                with contextlib.suppress(pykka.ActorDeadError):
                    ref.tell(FlowFinished(flow_id=flow_id))

        thread = threading.Thread(target=target, name=f"Updater-{kind}", daemon=True)
        self._threads[flow_id] = thread
        thread.start()


# --- flow starts: resolve once, check, claim, acknowledge, run (on the flow thread) -----------


def _recover(fc: FlowContext) -> None:
    """Finish or roll back interrupted updates, and report stray backups: an agent that never
    updated a container has no update directory, and nothing to load the flow for."""
    if fc.journal_dir.is_dir():
        from actors.flows import container_update

        container_update.recover(fc)


def _finish_handover(fc: FlowContext) -> None:
    """After each registration: finish a self-update hand-over, if one is pending."""
    try:
        pending = (Path(fc.settings.data_path) / CLEANUP_FILE).exists()
    except OSError:
        pending = True  # unreadable: the flow says so
    if pending:
        from actors.flows import self_update

        self_update.on_connected(fc)


def _refused(fc: FlowContext, request_id: str, exc: Exception) -> None:
    """Answer a request whose guard check refused it or could not resolve its container."""
    if isinstance(exc, Refused):
        log.warning("refused: %s", exc)
        fc.reply(
            CommandFailed(request_id=request_id, error=str(exc), error_type="permission_denied")
        )
        return
    error, error_type = describe_docker_error("inspect container", exc, fc.settings.docker_host)
    log.info("%s", error)
    fc.reply(CommandFailed(request_id=request_id, error=error, error_type=error_type))


def _start_update(fc: FlowContext, guard: Guard, flows: FlowRegistry, msg: UpdateContainer) -> None:
    """Resolve the container to its full id (name or id, same container, same key), check the
    policy on it and its dependents, claim it, acknowledge, then update exactly that id."""
    try:
        resolved = guard.check(fc.client(), msg)
    except Exception as exc:
        _refused(fc, msg.request_id, exc)
        return
    assert resolved is not None
    target = resolved.targets[0]
    if not flows.claim(target.id, fc.flow_id):
        error = f"an update of {target.name} ({target.id[:12]}) is in progress"
        fc.reply(CommandFailed(request_id=msg.request_id, error=error))
        return
    fc.reply(
        CommandSucceeded(
            request_id=msg.request_id, payload=RawJson.of({"status": "update_started"})
        )
    )
    # §6/§14.10: the backend matches update_complete on the 12-char id it sent; for a name (or a
    # longer id) every event carries the container's 12-hex id instead
    report_id = msg.container_id if _ID12.fullmatch(msg.container_id) else target.id[:12]
    from actors.flows import container_update

    container_update.run(
        fc,
        dataclasses.replace(msg, container_id=target.id),
        report_id=report_id,
        checked=frozenset(t.id for t in resolved.targets),
    )


def _start_self_update(fc: FlowContext, guard: Guard, flows: FlowRegistry, msg: SelfUpdate) -> None:
    try:
        guard.check(fc.client(), msg)  # a protected agent container is never replaced
    except Exception as exc:
        _refused(fc, msg.request_id, exc)
        return
    if not flows.claim("self", fc.flow_id):
        fc.reply(
            CommandFailed(request_id=msg.request_id, error="a self-update is already in progress")
        )
        return
    fc.reply(
        CommandSucceeded(
            request_id=msg.request_id, payload=RawJson.of({"status": "self_update_started"})
        )
    )
    from actors.flows import self_update

    self_update.run(fc, msg)
