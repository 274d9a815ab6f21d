"""Small things a newcomer trips on (issue 9, point 10): log format, git-ignored build output,
the COMPOSE_ROOTS help. (The compose file's DOCKER_GID: tests/test_docs.py.)"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import agent_config
from actors.commands.compose_files import DEFAULT_SCAN_ROOTS, OPTIONAL_SCAN_ROOTS
from actors.runtime.logs import setup_logging
from tests.support.prerequisites import requires

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


def _log_one_line(json_format: bool | None, *, tty: bool) -> str:
    if not tty:
        stream = io.StringIO()
        setup_logging("info", json_format, stream=stream)
        logging.getLogger("newcomer").warning("hello %s", "there")
        return stream.getvalue()
    master, slave = os.openpty()  # a real terminal
    with os.fdopen(slave, "w") as terminal:
        setup_logging("info", json_format, stream=terminal)
        logging.getLogger("newcomer").warning("hello %s", "there")
        terminal.flush()
        data = os.read(master, 65536).decode()
    os.close(master)
    return data


def test_logs_are_coloured_text_on_a_terminal_when_log_json_is_unset() -> None:
    cfg = agent_config.load_config({"DOCKMON_URL": "https://d.example.com"})
    assert cfg.log_json is None
    text = _log_one_line(cfg.log_json, tty=True)
    assert "\x1b[" in text and "WARNING" in text and "hello there" in text
    assert not text.lstrip().startswith("{")


def test_logs_are_json_off_a_terminal_or_when_asked() -> None:
    assert json.loads(_log_one_line(None, tty=False))["message"] == "hello there"
    assert json.loads(_log_one_line(True, tty=True))["message"] == "hello there"
    plain = _log_one_line(False, tty=False)
    assert "hello there" in plain and not plain.startswith("{")


@requires(shutil.which("git") is not None and (REPO / ".git").exists(), "needs a git checkout")
@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        "wheels/dockmon_agent-0.1.0-py3-none-any.whl",
        "build/lib/agent_cli.py",
        "dist/dockmon_agent-0.1.0.tar.gz",
        "dockmon_agent.egg-info/PKG-INFO",
        "actors/__pycache__/base.cpython-311.pyc",
        ".pytest_cache/v/cache/lastfailed",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/0.6/x",
    ],
)
def test_the_venv_and_build_output_are_git_ignored(path: str) -> None:
    result = subprocess.run(
        ["git", "-C", str(REPO), "check-ignore", "-q", "--no-index", path], check=False
    )
    assert result.returncode == 0, f"{path} is not git-ignored"


def test_compose_roots_help_names_every_default_root_and_home() -> None:
    [setting] = [s for s in agent_config.SETTINGS if s.name == "COMPOSE_ROOTS"]
    assert "/home" in setting.help and "$HOME" in setting.help
    for root in (*DEFAULT_SCAN_ROOTS, *OPTIONAL_SCAN_ROOTS):
        assert root in setting.help, root
    readme = (REPO / "README.md").read_text()
    assert setting.help.replace("|", "/") in readme
