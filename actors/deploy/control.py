"""What the Deployer and a deployment's run thread share: the run's settings, its control (cancel
flag and live compose subprocess), the grace a stopped compose gets, and the secrets kept out of
log lines. The Deployer imports this at start; the run itself (runner.py, with the progress
parser and the classifier) is imported by the first deployment.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Sequence
from dataclasses import field

from actors.rules.policy import Policy
from messages.deploy import DeployCompose
from messages.records import record

#: seconds between SIGTERM and SIGKILL of a compose subprocess, and after SIGKILL
KILL_GRACE = 5.0


@record(kw_only=True)
class RunSettings:
    docker_host: str
    data_path: str
    stacks_dir: str
    docker_api_version: str | None = None
    host_stacks_dir: str | None = None
    own_container_id: str | None = None
    in_container: bool = False
    policy: Policy = field(default_factory=Policy)
    settle_s: float = 3.0
    poll_s: float = 0.5


class RunControl:
    """The one object a run thread and the Deployer share: cancel flag and live subprocess."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._cancelled = threading.Event()
        self.reason = ""

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def attach(self, proc: subprocess.Popen[str]) -> None:
        with self._lock:
            self._proc = proc
            cancelled = self._cancelled.is_set()
        if cancelled:
            stop_process(proc, kill=False)

    def detach(self) -> None:
        with self._lock:
            self._proc = None

    def cancel(self, reason: str) -> None:
        """Stop the run: SIGTERM to the compose subprocess (if one runs) and no new steps."""
        with self._lock:
            if not self._cancelled.is_set():
                self.reason = reason
            self._cancelled.set()
            proc = self._proc
        if proc is not None:
            stop_process(proc, kill=False)

    def kill(self) -> None:
        with self._lock:
            proc = self._proc
        if proc is not None:
            stop_process(proc, kill=True)

    def wait(self, seconds: float) -> bool:
        """Pause the run thread; True if cancelled meanwhile."""
        return self._cancelled.wait(seconds)


def stop_process(proc: subprocess.Popen[str], *, kill: bool) -> None:
    try:
        if proc.poll() is None:
            proc.kill() if kill else proc.terminate()
    except OSError:
        pass


def secret_values(request: DeployCompose) -> tuple[str, ...]:
    """Values that must not reach a log line: registry passwords and env file values."""
    values = [c.password.reveal() for c in request.registry_credentials if c.password]
    contents = [request.env_file_content, *(content for _, content in request.env_files)]
    for content in contents:
        for line in content.splitlines():
            _, sep, value = line.partition("=")
            value = value.strip().strip("'\"")
            if sep and len(value) >= 3:
                values.append(value)
    return tuple(sorted(set(values), key=len, reverse=True))


def scrub(text: str, secrets: Sequence[str]) -> str:
    for value in secrets:
        text = text.replace(value, "****")
    return text
