"""30 simulated days of ordinary traffic: timers, mailbox traffic and memory stay flat.

The real actors run on a fake clock and scheduler (tests/support/soak.py); whatever grows with
uptime (a timer chain that forks, a table nobody prunes, a queue nobody drains) shows up as a
figure that differs between the first days and the last ones.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest

from tests.support.soak import MonthRig

DAYS = 30


@pytest.fixture
def data_path(tmp_path: Path) -> Iterator[Path]:
    """On tmpfs when there is one: a month of status.json rewrites, each fsync'd."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=base or tmp_path) as path:
        yield Path(path)


@pytest.mark.timeout(600)
def test_a_month_of_uptime_keeps_timers_traffic_and_memory_flat(data_path: Path) -> None:
    threads_before = threading.active_count()
    rig = MonthRig(data_path)
    rig.start()
    logging.disable(logging.CRITICAL)  # pytest keeps every log record: objects that would grow
    try:
        samples = rig.run(DAYS)
    finally:
        logging.disable(logging.NOTSET)
        rig.stop()
        pykka.ActorRegistry.stop_all(block=True, timeout=5)
    early, late = samples[1], samples[-1]  # day 1 includes the start
    report = "\n".join(
        f"day {s.day:2}: pending {s.pending_total} {dict(s.pending)},"
        f" fired {sum(s.fired.values())}, deepest mailbox {s.max_inbox},"
        f" objects {s.objects}, {s.sizes}"
        for s in samples
    )
    for s in samples[1:]:
        # one timer per periodic duty, however long the agent has run
        assert s.pending_total <= early.pending_total + 3, report
        assert s.max_inbox <= max(early.max_inbox, 8) + 4, report
        for kind, count in s.fired.items():
            assert count <= early.fired.get(kind, 0) * 1.1 + 10, f"{kind} traffic grows\n{report}"
        assert (
            s.sizes["timers kept by the scheduler"]
            <= early.sizes["timers kept by the scheduler"] + 3
        ), report
        assert s.sizes["threads"] <= early.sizes["threads"] + 2, report
    assert late.objects - early.objects < 1000, report
    held = "table entries held by actors"
    assert late.sizes[held] <= early.sizes[held] + 20, report
    assert late.sizes["events unconfirmed"] <= 10, report
    assert threading.active_count() <= threads_before + 2
