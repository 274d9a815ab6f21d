"""``healthcheck`` and ``status`` tell the truth at once: a stopped agent, an unreachable Docker.

Issue 9, points 3 and 6: the real agent (in-process) against the strict hub and the private
dockerd, or a Docker socket that is missing, refused or not ours.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from actors.status import health_verdict, read_status
from agent_cli import main
from tests.support.agent_harness import running_agent
from tests.support.daemon import PrivateDockerd
from tests.support.waiting import wait_for


def _status(data: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((data / "status.json").read_text()))
    except (OSError, ValueError):
        return {}


def test_a_clean_stop_is_recorded_and_healthcheck_says_stopped_at_once(
    tmp_path: Path, dockerd: PrivateDockerd, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    args = ["--data-path", str(data)]
    with running_agent(data, dockerd.base_url) as agent:
        agent.hub.wait_registered()
        wait_for(lambda: _status(data).get("connected") is True, 10, "connected in status.json")
        assert main(["healthcheck", *args]) == 0
        capsys.readouterr()
    # running_agent stopped the supervisor: nothing may still claim the agent is healthy
    status = read_status(str(data))
    assert status["stopped"] is True and status["connected"] is False
    assert status["stop_reason"] == "test finished"
    assert main(["healthcheck", *args]) == 1
    out = capsys.readouterr().out
    assert out.startswith("unhealthy: the agent stopped at ") and "(test finished)" in out
    assert main(["status", *args]) == 0
    assert "health: UNHEALTHY (the agent stopped at" in capsys.readouterr().out


def test_health_verdict_of_a_stopped_agent() -> None:
    ok, why = health_verdict(
        {"stopped": True, "stopped_at": "2026-01-01T00:00:00Z", "stop_reason": "received SIGTERM"},
        unhealthy_after=300,
        stale_after=60,
    )
    assert not ok and why == "the agent stopped at 2026-01-01T00:00:00Z (received SIGTERM)"
