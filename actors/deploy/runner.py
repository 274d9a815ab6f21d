"""One deployment, start to finish, on a Deployer run thread (never in an actor).

``up``: write the stack files, ``compose config`` (compose's own validation and the resolved
model), refuse ``build:`` and protected containers, plan bind-mount host paths, optionally
``compose pull``, ``compose up --detach --remove-orphans`` (rolled back with ``down`` if it fails
and the stack had no containers before), then observe the containers (classify.py) and build
the ``deploy_complete`` payload. ``down``: ``compose down`` with every profile (and
``--volumes`` + the stack directory when ``remove_volumes``). ``restart``: down, then up.

Compose runs with a minimal environment and a private, temporary ``DOCKER_CONFIG`` (0700)
holding only this deployment's registry logins; it is deleted when the run ends. Progress is
reported through ``report(stage, message)``; the run can be cancelled (:class:`RunControl`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from actors.base import Clock
from actors.deploy import classify, engine, files, model, mounts
from actors.deploy.control import KILL_GRACE, RunControl, RunSettings, stop_process
from actors.deploy.journal import Journal, key_of
from actors.deploy.progress import ProgressTracker
from actors.rules.policy import Guard, Refused
from actors.runtime.docker_client import client_factory as docker_clients
from messages.deploy import DeployCompose

log = logging.getLogger(__name__)

CONFIG_TIMEOUT = 120.0
COMMAND_TIMEOUT = 1800.0  # one compose command; the backend itself never gives up on a deploy
Report = Callable[[str, str], None]


class Cancelled(Exception):
    pass


class Failed(Exception):
    """The run ends with this error in ``deploy_complete``."""


@dataclass
class _Command:
    rc: int
    tracker: ProgressTracker
    stdout: str = ""

    def error(self, what: str) -> str:
        """Compose's own words, or at least the exit code."""
        return self.tracker.error_text() or f"{what} exited with code {self.rc}"


class Runner:
    def __init__(
        self,
        settings: RunSettings,
        compose: engine.ComposeEngine,
        request: DeployCompose,
        control: RunControl,
        report: Report,
        clock: Clock,
        client_factory: Callable[[], docker.APIClient] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.s = settings
        self.compose = compose
        self.req = request
        self.control = control
        self._report = report
        self.clock = clock
        self._client_factory = client_factory or docker_clients(
            settings.docker_host, timeout=60, api_version=settings.docker_api_version
        )
        self._client: docker.APIClient | None = None
        self._environ = os.environ if environ is None else environ
        self._env: dict[str, str] = {}
        self._config_dir: str | None = None
        self._journal = Journal(settings.data_path)

    # --- entry point -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """The ``deploy_compose`` result payload; never raises."""
        req = self.req
        self.progress("starting", "Starting deployment...")
        try:
            payload = self._run()
        except Cancelled:
            payload = classify.failure_payload(req.deployment_id, req.action, self._interrupted())
        except Failed as exc:
            payload = classify.failure_payload(req.deployment_id, req.action, str(exc))
        except Exception as exc:  # a bug must still end in one deploy_complete
            log.exception("deployment %s failed unexpectedly", req.deployment_id)
            payload = classify.failure_payload(
                req.deployment_id, req.action, f"deployment failed unexpectedly: {exc}"
            )
        finally:
            self._cleanup()
        if payload.get("success"):
            self.progress("completed", self._completed_message(payload))
        else:
            self.progress("failed", str(payload.get("error") or "deployment failed"))
        return payload

    def progress(self, stage: str, message: str) -> None:
        self._report(stage, message)

    def _interrupted(self) -> str:
        reason = self.control.reason or "the run was cancelled"
        return (
            f"deployment interrupted: {reason} while docker compose was running; the stack may "
            "be partly deployed: check it and deploy again"
        )

    def _completed_message(self, payload: Mapping[str, Any]) -> str:
        if self.req.action == "down":
            return "Stack removed"
        services = payload.get("services") or {}
        return f"Deployment completed: {len(services)}/{len(services)} services running"

    def _cleanup(self) -> None:
        if self._config_dir is not None:
            shutil.rmtree(self._config_dir, ignore_errors=True)
            self._config_dir = None
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- the procedure -----------------------------------------------------------------------

    def _run(self) -> dict[str, Any]:
        req = self.req
        self.progress("validating", "Writing the stack files...")
        try:
            stack = files.write_stack(
                self.s.stacks_dir,
                req.project_name,
                req.compose_content,
                req.env_file_content,
                req.env_files,
            )
        except files.StackFileError as exc:
            raise Failed(f"Failed to write the stack files: {exc}") from exc
        except OSError as exc:
            raise Failed(f"Failed to write the stack files: {exc.strerror or exc}") from exc
        self._prepare_env()
        project = engine.ProjectArgs(
            project=req.project_name,
            directory=stack.directory,
            files=(stack.compose_file,),
            profiles=req.profiles,
        )
        self.progress("parsing", "Parsing the compose file...")
        stack_model = self._config(project)
        if req.action != "down" and (refusal := model.build_refusal(stack_model)):
            raise Failed(refusal)
        self._check_policy(stack_model)
        existing = self._summaries()
        if req.action == "down":
            return self._down(project, remove_volumes=req.remove_volumes)
        project = self._plan_binds(project, stack_model)
        if req.action == "restart":
            down = self._down(project, remove_volumes=False)
            if not down.get("success"):
                return down
            self.progress("executing", "Starting services...")
        return self._up(project, stack_model, had_containers=bool(existing))

    def _prepare_env(self) -> None:
        root = self._journal.temp_root
        directory = root / key_of(self.req.deployment_id)
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(mode=0o700)
            self._config_dir = str(directory)
            engine.write_docker_config(self._config_dir, self.req.registry_credentials)
        except OSError as exc:
            raise Failed(
                f"cannot prepare the deployment's private Docker config in {root}: "
                f"{exc.strerror or exc}"
            ) from exc
        self._env = engine.compose_env(
            self.s.docker_host, self._config_dir, self._environ, self.s.docker_api_version
        )

    def _config(self, project: engine.ProjectArgs) -> model.StackModel:
        cmd = self._command(engine.config_command(self.compose.path, project), "parse", "parsing")
        if cmd.rc != 0:
            raise Failed(f"Invalid compose file: {cmd.error('docker compose config')}")
        try:
            return model.parse_model(self.req.project_name, cmd.stdout)
        except ValueError as exc:
            raise Failed(f"docker compose config printed an unreadable model: {exc}") from exc

    def _check_policy(self, stack_model: model.StackModel) -> None:
        """The one guard for the containers the stack has (actors/rules/policy.py CHANGES), then the
        policy for the containers it would create."""
        try:
            Guard(self.s.policy, self.s.own_container_id).check(self.client(), self.req)
        except Refused as exc:
            raise Failed(str(exc)) from exc
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise Failed(f"cannot list the stack's containers: {exc}") from exc
        if refusal := model.protected_refusal(self.s.policy, model.touched_containers(stack_model)):
            raise Failed(refusal)

    def _plan_binds(
        self, project: engine.ProjectArgs, stack_model: model.StackModel
    ) -> engine.ProjectArgs:
        agent_root = os.path.realpath(self.s.stacks_dir)
        host_root = self.s.host_stacks_dir or (
            self._discover_host_root(agent_root) if self.s.in_container else None
        )
        plan = mounts.plan_binds(
            stack_model.raw, agent_root, host_root, in_container=self.s.in_container
        )
        if plan.problems:
            raise Failed(mounts.unmapped_error(plan, self.s.stacks_dir))
        text = plan.override_text()
        if text is None:
            return project
        for directory in plan.create_dirs:
            os.makedirs(directory, exist_ok=True)
        override = files.write_override(project.directory, text)
        self.progress("parsing", f"Bind mounts rewritten to the host path {host_root}")
        return dataclasses.replace(project, files=(*project.files, override))

    def _discover_host_root(self, agent_root: str) -> str | None:
        own = self.s.own_container_id
        if own:
            try:
                found = mounts.host_path_from_docker_mounts(
                    self.client().inspect_container(own).get("Mounts") or [], agent_root
                )
            except (docker.errors.DockerException, requests.RequestException) as exc:
                log.info("cannot inspect the agent's own container for mounts: %s", exc)
            else:
                if found:
                    return found
        try:
            text = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        return mounts.host_path_from_mountinfo(mounts.parse_mountinfo(text), agent_root)

    def _up(
        self, project: engine.ProjectArgs, stack_model: model.StackModel, *, had_containers: bool
    ) -> dict[str, Any]:
        req = self.req
        names = [s.name for s in stack_model.services]
        before = self._states()
        if req.pull_images and stack_model.images:
            images = stack_model.images
            shown = ", ".join(images) if len(images) <= 3 else f"{len(images)} images"
            self.progress("pulling_image", f"Pulling {shown}...")
            pulled = self._command(
                engine.pull_command(self.compose.path, project), "pull", "pulling_image"
            )
            if pulled.rc != 0:
                raise Failed(f"Image pull failed: {pulled.error('docker compose pull')}")
        self.progress(
            "executing", f"Creating and starting {len(names)} service(s): {', '.join(names)}"
        )
        up = self._command(
            engine.up_command(self.compose.path, project, force_recreate=req.force_recreate),
            "up",
            "executing",
        )
        if up.rc != 0:
            error = (
                f"Failed to start services ({', '.join(names)}): {up.error('docker compose up')}"
            )
            if not had_containers and not before:
                error += self._roll_back(project)
            raise Failed(error)
        return self._observe(before)

    def _roll_back(self, project: engine.ProjectArgs) -> str:
        self.progress("executing", "Rolling back: removing what this deployment created...")
        down = self._command(
            engine.down_command(self.compose.path, project, remove_volumes=False),
            "down",
            "executing",
            cancellable=False,
        )
        if down.rc != 0:
            return f"; the rollback (docker compose down) failed too: {down.error('down')}"
        return "; rolled back (the stack had no containers before)"

    def _down(self, project: engine.ProjectArgs, *, remove_volumes: bool) -> dict[str, Any]:
        what = "Removing the stack and its volumes..." if remove_volumes else "Stopping services..."
        self.progress("executing", what)
        down = self._command(
            engine.down_command(self.compose.path, project, remove_volumes=remove_volumes),
            "down",
            "executing",
        )
        if down.rc != 0:
            raise Failed(f"compose down failed: {down.error('docker compose down')}")
        if remove_volumes and self.req.action == "down":
            problem = files.remove_stack_dir(self.s.stacks_dir, self.req.project_name)
            if problem:
                log.warning("stack %s: %s", self.req.project_name, problem)
        return classify.success_payload(self.req.deployment_id, self.req.action)

    def _observe(self, before: list[classify.ContainerState]) -> dict[str, Any]:
        req = self.req
        waiting = req.wait_for_healthy
        baselines = {c.id: c.restart_count for c in before}
        settle = self.s.settle_s
        budget = max(float(req.health_timeout), settle + 1.0) if waiting else settle + 1.0
        if waiting:
            self.progress(
                "waiting_for_health",
                f"Waiting up to {req.health_timeout}s for the services to be healthy...",
            )
        else:
            self.progress("health_check", f"Checking that the services stay up ({settle:g}s)...")
        deadline = self.clock.monotonic() + budget
        reported: dict[str, classify.Verdict] = {}
        while True:
            now = self.clock.time_ns() / 1e9
            outcomes = classify.judge_all(
                self._states(), baselines=baselines, now=now, settle_s=settle, waiting=waiting
            )
            for o in outcomes:
                verdict = o.judgement.verdict
                if verdict is not classify.Verdict.PENDING and reported.get(o.service) != verdict:
                    reported[o.service] = verdict
                    word = "ready" if verdict is classify.Verdict.OK else "failed"
                    why = f" ({o.judgement.reason})" if o.judgement.reason else ""
                    self.progress("health_check", f"Service {o.service}: {word}{why}")
            if classify.settled(outcomes):
                return classify.outcome_payload(req.deployment_id, req.action, outcomes)
            if self.clock.monotonic() >= deadline:
                return classify.outcome_payload(
                    req.deployment_id, req.action, outcomes, timed_out=waiting
                )
            if self.control.wait(self.s.poll_s):
                raise Cancelled

    # --- Docker and compose ------------------------------------------------------------------

    def client(self) -> docker.APIClient:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def _summaries(self) -> list[dict[str, Any]]:
        label = f"{classify.PROJECT_LABEL}={self.req.project_name}"
        try:
            return list(self.client().containers(all=True, filters={"label": label}))
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise Failed(f"cannot list the stack's containers: {exc}") from exc

    def _states(self) -> list[classify.ContainerState]:
        """Each container's list entry (for Docker's status text) and inspect, consistent: a
        container that changed state between the two calls is listed again."""
        for _attempt in range(3):
            states: list[classify.ContainerState] = []
            consistent = True
            for summary in self._summaries():
                try:
                    inspect = self.client().inspect_container(summary["Id"])
                except docker.errors.NotFound:
                    continue  # removed meanwhile
                except (docker.errors.DockerException, requests.RequestException) as exc:
                    raise Failed(f"cannot inspect container {_name(summary)}: {exc}") from exc
                state = classify.ContainerState.from_docker(summary, inspect)
                consistent &= summary.get("State") in (None, state.state)
                states.append(state)
            if consistent:
                break
        return states

    def _command(
        self, argv: list[str], phase: str, stage: str, *, cancellable: bool = True
    ) -> _Command:
        """Run one compose command, streaming its progress; raises Cancelled if cancelled."""
        if cancellable and self.control.cancelled:
            raise Cancelled
        tracker = ProgressTracker(phase=phase, initial_stage=stage)
        split = phase == "parse"  # config: the model on stdout, errors on stderr
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE if split else subprocess.STDOUT,
                env=self._env,
                cwd=argv_directory(argv),
                text=True,
                errors="replace",
                start_new_session=True,
            )
        except OSError as exc:
            raise Failed(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
        if cancellable:
            self.control.attach(proc)
        timeout = CONFIG_TIMEOUT if split else COMMAND_TIMEOUT
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()
            stop_process(proc, kill=True)

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        stdout = ""
        try:
            if split:
                stdout, stderr = proc.communicate()
                for line in stderr.splitlines():
                    self._forward(tracker.feed(line, self.clock.monotonic()))
            else:
                assert proc.stdout is not None
                for line in proc.stdout:
                    self._forward(tracker.feed(line, self.clock.monotonic()))
            rc = proc.wait()
        finally:
            timer.cancel()
            if cancellable:
                self.control.detach()
            if proc.poll() is None:
                stop_process(proc, kill=True)
                proc.wait(KILL_GRACE)
        if cancellable and self.control.cancelled:
            raise Cancelled
        if timed_out.is_set():
            tracker.errors.append(f"docker compose did not finish within {timeout:g}s")
        return _Command(rc=rc, tracker=tracker, stdout=stdout)

    def _forward(self, items: list[Any]) -> None:
        for item in items:
            self.progress(item.stage, item.message)


def argv_directory(argv: Sequence[str]) -> str | None:
    """The ``--project-directory`` of a compose command line (its working directory)."""
    for flag, value in itertools.pairwise(argv):
        if flag == "--project-directory":
            return value
    return None


def _name(summary: Mapping[str, Any]) -> str:
    names = summary.get("Names") or [""]
    return str(names[0]).lstrip("/")
