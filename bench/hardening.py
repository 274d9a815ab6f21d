"""Hostile input and long uptime, measured (issue 10: frames, shell sessions, a month of timers).

    python bench/hardening.py                 # all three, against this checkout
    python bench/hardening.py --only frames,shells --agent-repo /path/to/other/checkout

* frames: the agent (a real process) gets one frame of 16 MiB (a valid request), 50 MB and
  200 MB from the hub; printed: how long until a small request sent right after it is answered,
  and the agent's peak RSS growth (VmHWM). A fresh agent process per size, so peaks don't mix.
* shells: 200 shell sessions in one container, then all closed; printed: the agent's threads and
  descriptors while open, and how long after the closes both are back to the baseline.
* soak: 30 simulated days of ordinary traffic on the fake clock (tests/support/soak.py); printed per
  day 1/15/30: pending timers, timers fired that day (mailbox traffic), deepest mailbox, objects.

``--agent-repo`` runs the agent of another checkout (``python -m agent_cli`` from there) for a
before/after comparison of frames and shells; the soak always uses this checkout's actors.
Benchmarks measure; they assert nothing. Run as root (private dockerd).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import run as base  # noqa: E402  (bench/run.py: the private dockerd + hub + agent process)

MIB = 1024 * 1024


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def start(b: base.Bench) -> int:
    """A fresh agent process, registered (bench/run.py counts connections, not registrations)."""
    before = len(b.hub.registrations)
    pid = b.start_agent()
    b.hub.wait_registered(count=before + 1, timeout=30)
    return pid


def frames(b: base.Bench) -> list[str]:
    out = []
    for label, size in (("16 MiB request", 16 * MIB - 4096), ("50 MB", 50_000_000),
                        ("200 MB", 200_000_000)):  # fmt: skip
        pid = start(b)
        b.hub.command("list_containers", timeout=30)  # warm
        hwm_before = _status(pid, "VmHWM") / 1024
        pad = "z" * (size - 200)
        frame = json.dumps(
            {
                "type": "command",
                "id": f"big-{uuid.uuid4()}",
                "command": "list_containers",
                "payload": {"pad": pad},
            }
        )
        del pad
        sent = threading.Event()

        def blast(text: str = frame, done: threading.Event = sent) -> None:
            with contextlib.suppress(Exception):
                b.hub.send_raw(text)
            done.set()

        started = time.monotonic()
        threading.Thread(target=blast, daemon=True).start()
        time.sleep(0.05)  # the big frame is on its way first
        answered = "no answer within 180 s"
        while time.monotonic() - started < 180:  # a request lost to the reconnect is asked again
            try:
                if b.hub.connected and b.hub.command("list_containers", timeout=60).ok:
                    answered = f"{time.monotonic() - started:.2f} s"
                    break
            except (TimeoutError, ConnectionError, RuntimeError, KeyError):
                pass
            time.sleep(0.02)
        sent.wait(120)
        hwm_after = _status(pid, "VmHWM") / 1024
        out.append(
            f"frame {label:>14}: next request answered after {answered}; peak RSS "
            f"+{hwm_after - hwm_before:.0f} MB ({hwm_before:.0f} -> {hwm_after:.0f} MB)"
        )
        b.stop_agent()
        del frame
    return out


def shells(b: base.Bench, sessions: int) -> list[str]:
    pid = start(b)
    c = b.docker.containers.run(b.image, ["sleep", "3600"], network_mode="none",
                                labels=base.LABEL, detach=True)  # fmt: skip
    assert b.hub.command("list_containers").ok  # the audit log is open: part of the baseline
    threads0, fds0 = _status(pid, "Threads"), _fds(pid)
    ids = []
    for _ in range(sessions):
        sid = str(uuid.uuid4())
        ids.append(sid)
        b.hub.send_raw(json.dumps({"type": "shell_session", "payload": {
            "action": "start", "session_id": sid, "container_id": c.id}}))  # fmt: skip

    def started() -> int:
        return sum(1 for e in b.hub.events if e.get("command") == "shell_data"
                   and e["payload"].get("action") == "started")  # fmt: skip

    b.hub.wait_until(lambda: started() >= sessions, 120, "every session started")
    threads1, fds1 = _status(pid, "Threads"), _fds(pid)
    closed_at = time.monotonic()
    for sid in ids:
        b.hub.send_raw(
            json.dumps({"type": "shell_session", "payload": {"action": "close", "session_id": sid}})
        )
    sessions_gone = back = None
    while time.monotonic() - closed_at < 120:
        t, f = _status(pid, "Threads"), _fds(pid)
        if sessions_gone is None and t <= threads0 + 1 and f <= fds0 + 3:
            sessions_gone = time.monotonic() - closed_at  # at most the hang-up worker is left
        if t <= threads0 and f <= fds0:
            back = time.monotonic() - closed_at
            break
        time.sleep(0.05)
    c.remove(force=True)
    b.stop_agent()

    def after(seconds: float | None) -> str:
        return f"{seconds:.2f} s" if seconds is not None else "not within 120 s"

    return [
        f"shells: {sessions} sessions: threads {threads0} -> {threads1}, descriptors {fds0} -> "
        f"{fds1}; sessions' threads and sockets released {after(sessions_gone)} after the "
        f"closes (at most the hang-up worker left); all back to the baseline {after(back)}"
    ]


def soak(days: int) -> list[str]:
    import pykka

    from tests.support.soak import MonthRig

    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        rig = MonthRig(Path(d))
        rig.start()
        logging.disable(logging.CRITICAL)
        started = time.monotonic()
        try:
            samples = rig.run(days)
        finally:
            logging.disable(logging.NOTSET)
            rig.stop()
            pykka.ActorRegistry.stop_all()
    took = time.monotonic() - started
    out = [f"soak: {days} simulated days in {took:.0f} s"]
    for s in samples:
        if s.day in (1, 2, days // 2, days):
            out.append(
                f"  day {s.day:2}: pending timers {s.pending_total} {dict(s.pending)}; fired "
                f"{sum(s.fired.values())} (FlushStatus {s.fired.get('FlushStatus', 0)}); deepest "
                f"mailbox {s.max_inbox}; objects {s.objects}; {s.sizes}"
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="frames,shells,soak")
    parser.add_argument("--agent-repo", default=None, help="run the agent of this checkout")
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    if args.agent_repo:
        base.REPO = Path(args.agent_repo).resolve()
    lines: list[str] = []
    if wanted & {"frames", "shells"}:
        with tempfile.TemporaryDirectory() as tmp, base.Bench(Path(tmp)) as b:
            if "frames" in wanted:
                lines += frames(b)
            if "shells" in wanted:
                lines += shells(b, args.sessions)
    if "soak" in wanted:
        lines += soak(args.days)
    print(f"hardening benchmarks (agent from {base.REPO}):")
    for line in lines:
        print(" ", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
