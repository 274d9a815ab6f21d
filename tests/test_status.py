"""status.json, `dockmon-agent healthcheck` and `dockmon-agent status` against a real agent."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors import status as status_module
from actors.base import Peers
from actors.status import StatusReporterActor, health_verdict, read_status
from agent_cli import main
from messages.common import Ping
from messages.roles import Role
from messages.status import EventForwarded, FlushStatus, WriteFailed
from messages.timefmt import rfc3339_nano
from tests.conftest import REPO_ROOT
from tests.support.agent_harness import running_agent
from tests.support.daemon import PrivateDockerd
from tests.support.fakes import FakeClock, FakeScheduler, make_ctx
from tests.support.waiting import wait_for

NOW = 1_800_000_000.0


def stamp(seconds_ago: float) -> str:
    return rfc3339_nano(int((NOW - seconds_ago) * 1e9))


@pytest.mark.parametrize(
    ("status", "healthy", "reason"),
    [
        ({"updated_at": stamp(1), "connected": True}, True, "registered"),
        (
            {"updated_at": stamp(1), "connected": False, "disconnected_since": stamp(30)},
            True,
            "grace period",
        ),
        (
            {
                "updated_at": stamp(1),
                "connected": False,
                "disconnected_since": stamp(400),
                "last_error": "refused",
            },
            False,
            "not registered with DockMon for 400s (last error: refused)",
        ),
        ({"updated_at": stamp(120), "connected": True}, False, "not running"),
        ({"connected": True}, False, "not running"),
    ],
)
def test_health_verdict(status: dict[str, Any], healthy: bool, reason: str) -> None:
    ok, why = health_verdict(status, unhealthy_after=300, stale_after=60, now=NOW)
    assert ok is healthy and reason in why


def test_status_file_follows_the_connection_and_healthcheck_reports_it(
    tmp_path: Path,
    dockerd: PrivateDockerd,
    make_container: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    with running_agent(data, dockerd.base_url) as agent:
        hub = agent.hub
        hub.wait_registered()
        wait_for(lambda: _status(data).get("connected") is True, 10, "connected in status.json")
        make_container(["sleep", "3600"])
        wait_for(lambda: _status(data).get("events_forwarded", 0) > 0, 10, "events counted")
        args = ["--dockmon-url", hub.url, "--data-path", str(data), "--unhealthy-after", "1s"]
        assert main(["healthcheck", *args]) == 0
        assert "healthy: registered with DockMon" in capsys.readouterr().out

        agent.crash(Role.DOCKER_GATEWAY)
        wait_for(lambda: _status(data).get("actor_restarts") == 1, 10, "a counted restart")

        hub.refuse(True)
        hub.drop()
        wait_for(lambda: _status(data).get("connected") is False, 10, "disconnected")
        wait_for(lambda: main(["healthcheck", *args]) == 1, 10, "unhealthy after 1s")
        out = capsys.readouterr().out
        assert "unhealthy: not registered with DockMon for" in out
        assert main(["status", *args]) == 0
        printed = capsys.readouterr().out
        assert "health: UNHEALTHY" in printed and "outbox_depth:" in printed
        hub.refuse(False)
        wait_for(lambda: _status(data).get("reconnects") == 1, 15, "the reconnect counted")
        assert main(["healthcheck", *args]) == 0
    status = read_status(str(data))
    assert status["connected"] is False  # written on the way out
    assert oct(Path(data, "status.json").stat().st_mode & 0o777) == "0o644"


def test_healthcheck_without_a_status_file_is_unhealthy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--dockmon-url", "http://127.0.0.1:9", "--data-path", str(tmp_path)]
    assert main(["healthcheck", *args]) == 1
    assert "cannot read the agent's status" in capsys.readouterr().out


def _status(data: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((data / "status.json").read_text()))
    except (OSError, ValueError):
        return {}


# --- the reporter's timers (fake clock and scheduler) -----------------------------------------


@pytest.fixture
def reporter(tmp_path: Path) -> Iterator[tuple[pykka.ActorRef[Any], FakeScheduler]]:
    clock = FakeClock()
    scheduler = FakeScheduler(clock)
    ref = StatusReporterActor.start(
        make_ctx(Peers(), scheduler, clock, child_id="status"),
        data_path=str(tmp_path),
        version="test",
        heartbeat=10.0,
    )
    yield ref, scheduler
    ref.stop()


def test_updates_after_a_flush_never_start_a_second_flush_chain(
    reporter: tuple[pykka.ActorRef[Any], FakeScheduler],
) -> None:
    ref, scheduler = reporter
    fired_per_round: list[int] = []
    for round_ in range(40):
        before = scheduler.fired["FlushStatus"]
        for i in range(25):  # an update right after each flush, and some quiet heartbeats
            ref.tell(EventForwarded(at_ns=scheduler.clock.time_ns(), total=round_ * 25 + i))
            ref.ask(Ping(), timeout=3)
            scheduler.advance(1.5 if i % 5 else 12.0)
            ref.ask(Ping(), timeout=3)
            assert len(scheduler.pending(FlushStatus)) == 1
        fired_per_round.append(scheduler.fired["FlushStatus"] - before)
    assert max(fired_per_round) == min(fired_per_round[1:]), fired_per_round


def test_a_failing_status_write_is_counted_and_logged_once(
    reporter: tuple[pykka.ActorRef[Any], FakeScheduler],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ref, scheduler = reporter

    def full(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(status_module, "write_json_atomic", full)
    for total in range(1, 6):
        ref.tell(EventForwarded(at_ns=scheduler.clock.time_ns(), total=total))
        ref.ask(Ping(), timeout=3)
        scheduler.advance(11.0)
        ref.ask(Ping(), timeout=3)
    ref.tell(WriteFailed(what="audit", error="audit.log: No space left on device"))
    ref.ask(Ping(), timeout=3)
    assert caplog.text.count("cannot write") == 1
    monkeypatch.undo()
    scheduler.advance(11.0)
    ref.ask(Ping(), timeout=3)
    status = read_status(str(tmp_path))
    assert status["status_write_failures"] == 5
    assert status["audit_write_failures"] == 1
    assert status["events_forwarded"] == 5
    assert "No space left" in status["last_write_error"]


_HEAVY = (
    "docker", "requests", "pykka", "websocket", "asyncio", "yaml", "colorlog", "supervisor",
    "argparse", "socket", "selectors",
)  # fmt: skip


def test_healthcheck_loads_no_actor_docker_py_or_pykka(tmp_path: Path) -> None:
    """Docker runs ``healthcheck`` every 30 s: it reads one JSON file, so it imports only the
    configuration and the verdict (bench/run.py measures its RSS and time). Docker gives it no
    arguments, so it builds no argument parser either."""
    status = {"connected": True, "updated_at": rfc3339_nano(time.time_ns())}
    (tmp_path / "status.json").write_text(json.dumps(status))
    code = (
        "import sys, agent_cli\n"
        "rc = agent_cli.main(['healthcheck'])\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:]))\n"
        "heavy += sorted(m for m in sys.modules if m.startswith('actors.') and m.count('.') == 1"
        " and m.split('.')[1] not in ('errors', 'rules', 'runtime', 'host'))\n"
        "print('heavy:', heavy, 'rc:', rc)\n"
    )
    env = {**os.environ, "DATA_PATH": str(tmp_path)}
    env.pop("DOCKMON_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "-c", code, *_HEAVY],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "healthy: registered with DockMon" in result.stdout
    assert "heavy: [] rc: 0" in result.stdout


def test_the_agent_started_without_arguments_builds_no_argument_parser(tmp_path: Path) -> None:
    """DockMon's docker run line passes no arguments: the configuration comes from the
    environment alone, as ``parse_args([])`` would give, and argparse stays out of the agent."""
    code = "import sys, agent_cli\nrc = agent_cli.main([])\nprint('argparse' in sys.modules, rc)\n"
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKMON_CONFIG", "DOCKMON_URL")}
    env["DATA_PATH"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.stdout.split() == ["False", "2"], result.stderr
    assert "DOCKMON_URL" in result.stderr  # the same problems as with a parser
