"""Configuration and startup errors: all at once, each once, and only what is really wrong.

``agent_cli.main`` in this process with exactly the environment each test sets (issue 9, 5).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import agent_cli
import agent_config
from actors.status import STATUS_FILE
from messages.timefmt import rfc3339_nano

URL_MISSING = "DOCKMON_URL is not set"
TOKEN_MISSING = "no token: set REGISTRATION_TOKEN"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for setting in agent_config.SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)
        monkeypatch.delenv(setting.name.lower(), raising=False)
    monkeypatch.delenv("DOCKMON_CONFIG", raising=False)
    yield


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = agent_cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_with_nothing_set_both_the_url_and_the_token_are_listed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATA_PATH", str(tmp_path / "data"))
    code, out, err = run(capsys)
    assert code == 2
    assert out == ""
    assert err.count(URL_MISSING) == 1, err
    assert err.count(TOKEN_MISSING) == 1, err
    assert "2 problems" in err


def test_a_data_path_problem_is_printed_once_not_as_a_log_line_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    monkeypatch.setenv("DOCKMON_URL", "https://dockmon.example.com")
    monkeypatch.setenv("REGISTRATION_TOKEN", "abc-123")
    monkeypatch.setenv("DATA_PATH", str(not_a_dir))
    code, out, err = run(capsys)
    assert code == 2
    assert out == ""
    assert err.count("is not a directory") == 1, err
    assert not any(line.lstrip().startswith("{") for line in err.splitlines()), err


def test_a_yaml_syntax_error_is_not_also_reported_as_missing_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("dockmon_url: https://dockmon.example.com\nregistration_token: [abc\n")
    monkeypatch.setenv("DATA_PATH", str(tmp_path / "data"))
    code, _, err = run(capsys, "--config", str(config))
    assert code == 2
    assert "YAML syntax error" in err
    assert URL_MISSING not in err and TOKEN_MISSING not in err
    assert err.count("YAML syntax error") == 1


def test_status_and_healthcheck_need_only_data_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATA_PATH", str(tmp_path))
    status = {
        "updated_at": rfc3339_nano(time.time_ns()),
        "connected": True,
        "pid": 1,
    }
    (tmp_path / STATUS_FILE).write_text(json.dumps(status))
    code, out, _ = run(capsys, "healthcheck")
    assert (code, out.strip()) == (0, "healthy: registered with DockMon")
    code, out, _ = run(capsys, "status")
    assert code == 0 and "health: healthy" in out

    monkeypatch.setenv("UNHEALTHY_AFTER", "soon")  # a setting healthcheck uses: reported
    code, out, _ = run(capsys, "healthcheck")
    assert code == 1 and "UNHEALTHY_AFTER" in out


def test_print_config_prints_what_it_can_and_marks_the_invalid_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DOCKMON_URL", "ftp://dockmon.example.com")
    monkeypatch.setenv("LOG_LEVEL", "loud")
    monkeypatch.setenv("PERMANENT_TOKEN", "has space")
    monkeypatch.setenv("DATA_PATH", str(tmp_path))
    monkeypatch.setenv("RECONNECT_MAX", "2m")
    code, out, err = run(capsys, "--print-config")
    assert code == 2
    lines = {line.split("=", 1)[0]: line for line in out.splitlines() if "=" in line}
    assert set(lines) == {s.name for s in agent_config.SETTINGS}
    assert lines["DOCKMON_URL"].startswith("DOCKMON_URL=ftp://dockmon.example.com  # env; INVALID:")
    assert lines["LOG_LEVEL"].startswith("LOG_LEVEL=loud  # env; INVALID: invalid level")
    assert "INVALID: invalid token" in lines["PERMANENT_TOKEN"]
    assert "has space" not in out  # a secret stays masked even when it is invalid
    assert lines["RECONNECT_MAX"] == "RECONNECT_MAX=120s  # env"
    assert lines["DATA_PATH"] == f"DATA_PATH={tmp_path}  # env"
    assert "3 problems" in err
