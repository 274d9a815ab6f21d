"""REGISTRATION_TOKEN_FILE / PERMANENT_TOKEN_FILE (Docker secrets style), with real files."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import agent_cli
from actors.errors import ConfigError
from actors.runtime.logs import setup_logging
from agent_config import Config, format_config, load_config
from messages.common import Secret
from tests.support.agent_harness import running_agent
from tests.support.daemon import PrivateDockerd
from tests.support.hub import FakeHub
from tests.support.prerequisites import require

URL = "https://dockmon.example.com"
REG = "reg-from-file-0f1e2d3c4b5a"
PERM = "perm-from-file-9a8b7c6d5e4f"


def load(env: dict[str, str], **kwargs: object) -> Config:
    return load_config({"DOCKMON_URL": URL, **env}, path_exists=lambda _: False, **kwargs)  # type: ignore[arg-type]


def problems(env: dict[str, str], **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(env, **kwargs)
    return info.value.problems


def secret(tmp_path: Path, text: str | bytes, name: str = "secret") -> str:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_tokens_are_read_from_files_without_trailing_whitespace(tmp_path: Path) -> None:
    reg = secret(tmp_path, f"{REG}\n", "reg")
    perm = secret(tmp_path, f"{PERM} \r\n\t\n", "perm")
    cfg = load({"REGISTRATION_TOKEN_FILE": reg, "PERMANENT_TOKEN_FILE": perm})
    assert cfg.registration_token == Secret(REG)
    assert cfg.permanent_token == Secret(PERM)
    assert cfg.registration_token_file == reg
    assert cfg.permanent_token_file == perm
    sources = dict(cfg.sources)
    assert sources["REGISTRATION_TOKEN"] == f"file:{reg}"
    assert sources["PERMANENT_TOKEN"] == f"file:{perm}"
    assert sources["REGISTRATION_TOKEN_FILE"] == "env"


def test_the_env_value_wins_and_the_file_is_not_read(tmp_path: Path) -> None:
    missing = str(tmp_path / "never-read")
    cfg = load({"REGISTRATION_TOKEN": "reg-from-env-1234", "REGISTRATION_TOKEN_FILE": missing})
    assert cfg.registration_token == Secret("reg-from-env-1234")
    sources = dict(cfg.sources)
    assert sources["REGISTRATION_TOKEN"] == "env"
    assert sources["REGISTRATION_TOKEN_FILE"] == "env; unused, REGISTRATION_TOKEN is set"
    text = format_config(cfg)
    assert f"REGISTRATION_TOKEN_FILE={missing}  # env; unused, REGISTRATION_TOKEN is set" in (
        text.splitlines()
    )


def test_yaml_can_name_the_file(tmp_path: Path) -> None:
    reg = secret(tmp_path, REG, "reg")
    config = secret(tmp_path, f"registration_token_file: {reg}\n", "agent.yaml")
    cfg = load({}, config_path=config)
    assert cfg.registration_token == Secret(REG)
    assert dict(cfg.sources)["REGISTRATION_TOKEN_FILE"] == "yaml"
    assert dict(cfg.sources)["REGISTRATION_TOKEN"] == f"file:{reg}"


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope")
    (problem,) = problems({"PERMANENT_TOKEN_FILE": path})
    assert problem.startswith(f"PERMANENT_TOKEN_FILE: {path!r} does not exist; mount the secret")
    assert "or set PERMANENT_TOKEN directly, or unset PERMANENT_TOKEN_FILE" in problem


def test_empty_and_blank_files(tmp_path: Path) -> None:
    for text in ("", "\n", "  \t\r\n"):
        path = secret(tmp_path, text)
        (problem,) = problems({"REGISTRATION_TOKEN_FILE": path})
        assert problem.startswith(f"REGISTRATION_TOKEN_FILE: {path!r} is empty; write the token")


def test_directory_binary_and_huge_files(tmp_path: Path) -> None:
    (problem,) = problems({"REGISTRATION_TOKEN_FILE": str(tmp_path)})
    assert problem == (
        f"REGISTRATION_TOKEN_FILE: {str(tmp_path)!r} is a directory; point "
        "REGISTRATION_TOKEN_FILE at the file inside it"
    )
    binary = secret(tmp_path, b"\xff\xfe\x00token", "bin")
    assert problems({"REGISTRATION_TOKEN_FILE": binary}) == [
        f"REGISTRATION_TOKEN_FILE: {binary!r} is not UTF-8 text; it must contain only the token"
    ]
    huge = secret(tmp_path, "a" * (64 * 1024 + 1), "huge")
    assert problems({"REGISTRATION_TOKEN_FILE": huge}) == [
        f"REGISTRATION_TOKEN_FILE: {huge!r} is larger than 64 KiB; it must contain only the token"
    ]


def _problems_within(env: dict[str, str], seconds: float = 5) -> list[str]:
    """load_config on a thread: a secret file that blocks (a FIFO) must not hang the test."""
    found: list[list[str]] = []
    worker = threading.Thread(target=lambda: found.append(problems(env)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert found, f"reading the secret file hung for more than {seconds}s"
    return found[0]


def test_a_fifo_or_a_device_is_refused_without_reading_it(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    kinds = [str(fifo)]
    if os.geteuid() == 0:
        device = tmp_path / "zero"
        os.mknod(device, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # like /dev/zero
        kinds.append(str(device))
    for path in kinds:
        assert _problems_within({"REGISTRATION_TOKEN_FILE": path}) == [
            f"REGISTRATION_TOKEN_FILE: {path!r} is not a regular file (a FIFO, device or "
            "socket); point REGISTRATION_TOKEN_FILE at the file that holds the token, or set "
            "REGISTRATION_TOKEN directly, or unset REGISTRATION_TOKEN_FILE"
        ]


def test_a_symlinked_secret_is_followed_like_kubernetes_mounts_it(tmp_path: Path) -> None:
    data = tmp_path / "..data"
    data.mkdir()
    secret(data, f"{REG}\n", "token")
    (tmp_path / "token").symlink_to(data / "token")
    cfg = load({"REGISTRATION_TOKEN_FILE": str(tmp_path / "token")})
    assert cfg.registration_token == Secret(REG)


def test_invalid_token_in_a_file_names_the_file_not_the_value(tmp_path: Path) -> None:
    path = secret(tmp_path, '"quoted-secret-value"\n')
    (problem,) = problems({"REGISTRATION_TOKEN_FILE": path})
    assert problem.startswith(f"REGISTRATION_TOKEN_FILE ({path!r}): invalid token of 21 char")
    assert "check for quotes or spaces" in problem
    assert "quoted-secret-value" not in problem


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = problems(
        {
            "REGISTRATION_TOKEN_FILE": str(tmp_path / "a"),
            "PERMANENT_TOKEN_FILE": secret(tmp_path, ""),
            "LOG_LEVEL": "loud",
        }
    )
    assert [p.split(":", 1)[0] for p in found] == [
        "REGISTRATION_TOKEN_FILE",
        "PERMANENT_TOKEN_FILE",
        "LOG_LEVEL",
    ]


def test_unreadable_file(tmp_path: Path) -> None:
    path = secret(tmp_path, REG)
    os.chmod(path, 0o000)
    if os.geteuid() != 0:
        (problem,) = problems({"REGISTRATION_TOKEN_FILE": path})
    else:
        # root reads anything; drop CAP_DAC_OVERRIDE in a child so the mode bits apply to it
        setpriv = shutil.which("setpriv")
        require(
            setpriv is not None, "needs setpriv (util-linux) to test an unreadable file as root"
        )
        assert setpriv is not None
        code = (
            "import sys, agent_config\n"
            "try:\n"
            "    agent_config.load_config({'DOCKMON_URL': 'http://h', "
            "'REGISTRATION_TOKEN_FILE': sys.argv[1]})\n"
            "except agent_config.ConfigError as exc:\n"
            "    print(exc.problems[0])\n"
        )
        drop = (setpriv, "--bounding-set", "-dac_override,-dac_read_search")
        proc = subprocess.run(
            [*drop, sys.executable, "-c", code, path],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        problem = proc.stdout.strip()
    assert problem == (
        f"REGISTRATION_TOKEN_FILE: {path!r} is not readable by the agent's user (uid "
        f"{os.getuid()}); make it readable (chown/chmod 0400, or set uid/mode on the compose "
        "secret)"
    )


def test_file_tokens_are_redacted_in_logs(tmp_path: Path) -> None:
    token = "perm-redact-me-5f6e7d8c"
    load({"PERMANENT_TOKEN_FILE": secret(tmp_path, token + "\n")})
    stream = io.StringIO()
    setup_logging("info", json_format=True, stream=stream)
    logging.getLogger("t").info("token is %s", token)
    assert json.loads(stream.getvalue())["message"] == "token is ****"


def test_print_config_shows_the_file_source_and_masks_the_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = secret(tmp_path, REG + "\n", "reg")
    monkeypatch.setenv("DOCKMON_URL", URL)
    monkeypatch.setenv("REGISTRATION_TOKEN_FILE", reg)
    monkeypatch.delenv("REGISTRATION_TOKEN", raising=False)
    assert agent_cli.main(["--print-config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"REGISTRATION_TOKEN={REG[:4]}…{REG[-4:]}  # file:{reg}" in lines
    assert f"REGISTRATION_TOKEN_FILE={reg}  # env" in lines
    assert not any(REG in line for line in lines)


def test_cli_reports_a_bad_file_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DOCKMON_URL", URL)
    monkeypatch.delenv("REGISTRATION_TOKEN", raising=False)
    monkeypatch.setenv("REGISTRATION_TOKEN_FILE", str(tmp_path / "gone"))
    assert agent_cli.main(["--print-config"]) == 2
    err = capsys.readouterr().err
    assert f"REGISTRATION_TOKEN_FILE: {str(tmp_path / 'gone')!r} does not exist" in err


def test_agent_registers_with_a_token_from_a_file(tmp_path: Path, dockerd: PrivateDockerd) -> None:
    with FakeHub() as hub:
        hub.add_registration_token(REG)
        path = secret(tmp_path, REG + "\n", "reg")
        with running_agent(
            tmp_path / "data",
            dockerd.base_url,
            hub=hub,
            REGISTRATION_TOKEN="",  # unset: the file is the only source
            REGISTRATION_TOKEN_FILE=path,
        ):
            hub.wait_registered()
        assert [r["token"] for r in hub.registrations] == [REG]
        hub.assert_clean()
