"""Deployer: runs ``deploy_compose`` (PROTOCOL §8.1) on the real Docker Compose engine.

Owns the compose subprocesses and the stacks directory. Each request is acknowledged at once
(``deployment_started``) and runs on its own thread (actors/deploy/runner.py), which tells this
actor typed messages (``DeployProgressed``, ``DeployFinished``); one deployment per stack at a
time: a second request for a stack that is being deployed gets a clear error.

Nothing is lost or reported twice:

* Before the ack, the deployment is journaled ``running`` in ``$DATA_PATH/deployments``; the
  run thread journals the ``deploy_complete`` payload when it ends. The result is sent as a
  ``TrackedEventOut``: the Connection confirms it by pong (``EventDelivered``), and only then is
  the entry deleted. Until then it is sent again after every (re)registration
  (``LinkStateChanged``) and at every start, so it survives dropped links and restarts of the
  Connection, of this actor and of the agent.
* Runs are process-wide (:class:`DeployRuns`, held by the supervisor's factory), so a restart
  of this actor neither loses nor duplicates a run; the new generation gets its messages.
* On SIGTERM, ``on_stop`` waits up to ``stop_timeout`` for running deployments, then stops their
  compose subprocess. Results of runs that end during shutdown stay journaled and go out at the
  next start (with exactly one ``deploy_complete``); a run the agent was killed in the middle of
  is reported then as failed ("deployment interrupted").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias, assert_never

from actors.base import ActorContext, SupervisedActor
from actors.deploy.control import KILL_GRACE, RunControl, RunSettings, scrub, secret_values
from actors.deploy.engine import ComposeEngine, ComposeProbe
from actors.deploy.journal import Entry, Journal
from messages.common import RawJson
from messages.deploy import DeployCompose, DeployFinished, DeployProgressed
from messages.docker import CommandFailed, CommandSucceeded
from messages.outbound import (
    AuditRecord,
    EventDelivered,
    EventOut,
    LinkStateChanged,
    TrackedEventOut,
)
from messages.records import record
from messages.roles import Role

log = logging.getLogger(__name__)

#: every message this actor accepts (besides Ping); anything else is logged and dropped
Inbox: TypeAlias = (
    DeployCompose | DeployProgressed | DeployFinished | EventDelivered | LinkStateChanged
)

NOT_AVAILABLE = "compose deployments not available on this agent"  # §8.1 step 1, exact
ROLE = Role.DEPLOYER


@record(kw_only=True)
class DeployerSettings:
    run: RunSettings  # what each deployment runs with
    #: how long SIGTERM waits for running deployments before stopping compose
    stop_timeout: float = 20.0


@dataclass(eq=False)
class Run:
    deployment_id: str
    project: str
    action: str
    control: RunControl
    thread: threading.Thread | None = None


class DeployRuns:
    """Process-wide registry of running deployments, one per stack."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_project: dict[str, Run] = {}

    def claim(self, run: Run) -> Run | None:
        """Register ``run``; the run already holding its stack if there is one."""
        with self._lock:
            held = self._by_project.get(run.project)
            if held is not None:
                return held
            self._by_project[run.project] = run
            return None

    def release(self, run: Run) -> None:
        with self._lock:
            if self._by_project.get(run.project) is run:
                del self._by_project[run.project]

    def running(self) -> list[Run]:
        with self._lock:
            return list(self._by_project.values())

    def is_running(self, deployment_id: str) -> bool:
        return any(r.deployment_id == deployment_id for r in self.running())


RunBody = Callable[[DeployCompose, RunControl, Callable[[str, str], None]], dict[str, Any]]


def failure_payload(deployment_id: str, action: str, error: str) -> dict[str, Any]:
    from actors.deploy import classify  # with the first failure, not at start

    return classify.failure_payload(deployment_id, action, error)


def interrupted_result(entry: Entry) -> dict[str, Any]:
    return failure_payload(
        entry.deployment_id,
        entry.action,
        f"deployment interrupted: the agent stopped while it ran ({entry.action} of stack "
        f"{entry.project}); the stack may be partly deployed: check it and deploy again",
    )


class DeployerActor(SupervisedActor):
    def __init__(
        self,
        ctx: ActorContext,
        *,
        settings: DeployerSettings,
        runs: DeployRuns,
        engine: ComposeProbe,
        run_body: RunBody | None = None,
    ) -> None:
        super().__init__(ctx)
        self._settings = settings
        self._runs = runs
        self._engine = engine
        self._run_body = run_body
        self._journal = Journal(settings.run.data_path)
        self._pending: dict[str, RawJson] = {}  # deployment id -> deploy_complete payload

    # --- lifecycle -----------------------------------------------------------------------------

    def on_start(self) -> None:
        live = {r.deployment_id for r in self._runs.running()}
        if not live:
            self._journal.clear_temp()
        for entry in self._journal.load_all():
            if entry.state == "finished" and entry.result is not None:
                self._pending[entry.deployment_id] = RawJson.of(entry.result)
            elif entry.state == "running" and entry.deployment_id not in live:
                result = interrupted_result(entry)
                log.warning(
                    "deployment %s (%s of stack %s) was interrupted by the last stop; reporting "
                    "it as failed",
                    entry.deployment_id,
                    entry.action,
                    entry.project,
                )
                self._journal_write(
                    Entry(entry.deployment_id, entry.project, entry.action, "finished", result)
                )
                self._pending[entry.deployment_id] = RawJson.of(result)
        for deployment_id in list(self._pending):
            self._send_result(deployment_id)

    def on_stop(self) -> None:
        """SIGTERM: let running compose commands finish within the bound, then stop them."""
        runs = [r for r in self._runs.running() if r.thread is not None]
        if not runs:
            return
        limit = self._settings.stop_timeout
        log.info("waiting up to %gs for %d running deployment(s)", limit, len(runs))
        deadline = self.ctx.clock.monotonic() + limit
        for run in runs:
            assert run.thread is not None
            run.thread.join(max(0.0, deadline - self.ctx.clock.monotonic()))
        late = [r for r in runs if r.thread is not None and r.thread.is_alive()]
        for run in late:
            log.warning(
                "stopping deployment %s of stack %s: still running after %gs",
                run.deployment_id,
                run.project,
                limit,
            )
            run.control.cancel(f"the agent was stopped (it waited {limit:g}s)")
        for run in late:
            assert run.thread is not None
            run.thread.join(KILL_GRACE)
            if run.thread.is_alive():
                run.control.kill()
                run.thread.join(KILL_GRACE)
            if run.thread.is_alive():
                log.error("deployment %s did not stop; it stays journaled", run.deployment_id)

    # --- dispatch -----------------------------------------------------------------------------

    def handle(self, message: object) -> Any:
        if not isinstance(message, Inbox):
            log.warning("Deployer ignored %s", type(message).__name__)
            return None
        match message:
            case DeployCompose():
                self._deploy(message)
            case DeployProgressed(deployment_id=deployment_id, stage=stage, message=text):
                payload = {"deployment_id": deployment_id, "stage": stage, "message": text}
                self._tell_connection(
                    EventOut(command="deploy_progress", payload=RawJson.of(payload))
                )
            case DeployFinished(deployment_id=deployment_id, project_name=project, result=result):
                self._finished(deployment_id, project, result)
            case EventDelivered(key=deployment_id):
                if self._pending.pop(deployment_id, None) is not None:
                    self._journal.remove(deployment_id)
            case LinkStateChanged(connected=True):
                for deployment_id in list(self._pending):
                    self._send_result(deployment_id)
            case LinkStateChanged():
                pass
            case _:
                assert_never(message)
        return None

    def _tell_connection(self, message: Any) -> None:
        self.ctx.peers.tell(Role.CONNECTION, message)

    def _reply(self, request_id: str, error: str = "") -> None:
        self._tell_connection(
            CommandFailed(request_id=request_id, error=error)
            if error
            else CommandSucceeded(
                request_id=request_id, payload=RawJson.of({"status": "deployment_started"})
            )
        )

    def _deploy(self, msg: DeployCompose) -> None:
        if not isinstance(self._engine, ComposeEngine):
            log.warning("deploy_compose refused: %s", self._engine.describe())
            self._reply(msg.request_id, NOT_AVAILABLE)
            return
        if msg.deployment_id in self._pending or self._runs.is_running(msg.deployment_id):
            self._reply(msg.request_id, f"deployment {msg.deployment_id} is already known")
            return
        run = Run(msg.deployment_id, msg.project_name, msg.action, RunControl())
        held = self._runs.claim(run)
        if held is not None:
            self._reply(
                msg.request_id,
                f"a deployment of stack {msg.project_name} is already running (deployment "
                f"{held.deployment_id}, {held.action}); wait for it to complete and try again",
            )
            return
        self._journal_write(Entry(msg.deployment_id, msg.project_name, msg.action, "running"))
        log.info(
            "deployment %s: %s of stack %s (profiles %s)",
            msg.deployment_id,
            msg.action,
            msg.project_name,
            ",".join(msg.profiles) or "none",
        )
        self._reply(msg.request_id)
        run.thread = threading.Thread(
            target=self._run_thread(msg, run), name=f"Deployer-{msg.project_name}"[:60], daemon=True
        )
        run.thread.start()

    def _run_thread(self, msg: DeployCompose, run: Run) -> Callable[[], None]:
        """The body of a run thread: it reports to whoever is the Deployer (role) right now."""
        peers, journal, body = self.ctx.peers, self._journal, self._body()
        secrets = secret_values(msg)

        def report(stage: str, text: str) -> None:
            progressed = DeployProgressed(
                deployment_id=msg.deployment_id, stage=stage, message=text
            )
            peers.tell(ROLE, progressed, optional=True)

        def target() -> None:
            try:
                result = body(msg, run.control, report)
            except Exception as exc:  # body() never raises; this is belt and braces
                log.exception("deployment %s failed unexpectedly", msg.deployment_id)
                result = failure_payload(msg.deployment_id, msg.action, str(exc))
            outcome = "success" if result.get("success") else "failed"
            log.info(
                "deployment %s (%s of stack %s) finished: %s%s",
                msg.deployment_id,
                msg.action,
                msg.project_name,
                outcome,
                f": {scrub(str(result['error']), secrets)}" if result.get("error") else "",
            )
            try:
                journal.write(
                    Entry(msg.deployment_id, msg.project_name, msg.action, "finished", result)
                )
            except OSError as exc:
                log.error(
                    "cannot journal the result of deployment %s in %s: %s (it is sent anyway, "
                    "but would be lost if the agent stopped before DockMon read it)",
                    msg.deployment_id,
                    journal.directory,
                    exc.strerror or exc,
                )
            finally:
                self._runs.release(run)
                finished = DeployFinished(
                    deployment_id=msg.deployment_id,
                    project_name=msg.project_name,
                    result=RawJson.of(result),
                )
                peers.tell(ROLE, finished)  # a dead letter if we are restarting: journaled

        return target

    def _body(self) -> RunBody:
        if self._run_body is not None:
            return self._run_body
        assert isinstance(self._engine, ComposeEngine)
        compose, run_settings = self._engine, self._settings.run
        clock = self.ctx.clock

        def body(
            msg: DeployCompose, control: RunControl, report: Callable[[str, str], None]
        ) -> dict[str, Any]:
            from actors.deploy.runner import Runner  # the first deployment loads the run's code

            return Runner(run_settings, compose, msg, control, report, clock).run()

        return body

    def _finished(self, deployment_id: str, project: str, result: RawJson) -> None:
        self._pending[deployment_id] = result
        self._send_result(deployment_id)
        value = result.value()
        if value.get("success"):
            verdict = "success"
        elif value.get("partial_success"):
            verdict = f"partial success (failed: {', '.join(value.get('failed_services', []))})"
        else:
            verdict = "failed"
        self._tell_connection(
            AuditRecord(
                operation="deploy_compose",
                target=project or None,
                result=f"{value.get('action', 'up')} finished: {verdict}",
            )
        )

    def _send_result(self, deployment_id: str) -> None:
        result = self._pending.get(deployment_id)
        if result is not None:
            self._tell_connection(
                TrackedEventOut(
                    command="deploy_complete", payload=result, owner=ROLE, key=deployment_id
                )
            )

    def _journal_write(self, entry: Entry) -> None:
        try:
            self._journal.write(entry)
        except OSError as exc:
            log.error(
                "cannot journal deployment %s in %s: %s; an interruption would go unreported",
                entry.deployment_id,
                self._journal.directory,
                exc.strerror or exc,
            )


def in_container(own_container_id: str | None) -> bool:
    """Whether the agent sees the stacks directory through a container's mounts: it runs in a
    container it could identify (see ``detect_own_container_id``)."""
    return own_container_id is not None
