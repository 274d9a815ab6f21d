"""CI runs the benchmarks only in smoke mode: every benchmark must run and report a figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.hostenv import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)
def test_benchmarks_run_in_smoke_mode(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "bench/run.py", "--smoke", "--json", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    names = " | ".join(r["name"] for r in rows)
    for expected in ("RSS idle", "event latency", "CPU per event", "stats: ",
                     "inspect round trip", "list_containers", "during a", "registered",
                     "reconnect storm", "soak", "bare runtime imports", "healthcheck process",
                     "after a peak"):  # fmt: skip
        assert expected in names
    assert all(r["agent"] and r["target"] for r in rows)
    assert "benchmark" in proc.stdout  # the printed table
