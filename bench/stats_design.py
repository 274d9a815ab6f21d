#!/usr/bin/env python3
"""Container stats: one streaming thread per container vs. one-shot polling from a small pool.

A benchmark, not a test. It starts a private dockerd (tests/support/daemon.py: own socket and
data-root, ``--bridge=none``, no iptables) unless ``--docker-host`` names one, runs
``--containers`` busybox ``sleep`` containers (network ``none``), then measures each design in
a fresh child process for ``--seconds`` of steady state (after a warm-up):

* ``stream``: one thread and one docker-py client per container, ``GET /containers/{id}/stats``
  with ``stream=true`` (what the Go agent does with goroutines);
* ``poll``: ``--workers`` threads with one client each; once per second every container is
  fetched with ``stream=false&one-shot=true`` (API >= 1.41) and the CPU delta is taken against
  our own previous reading (what actors/stats.py does).

Both designs turn every sample into the ``container_stats`` payload with
actors/telemetry/stats_math.py and encode it as JSON, so the CPU time includes the real per-sample
work. Reported per design:
samples per container per second, threads, agent CPU time per container-sample, RSS, and the CPU
the Docker daemon (dockerd + its containerd) spent meanwhile.

    sudo python3 bench/stats_design.py --containers 50 --seconds 10
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import queue
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import docker  # noqa: E402

from actors.telemetry.stats_math import container_reading, container_stats_payload  # noqa: E402
from actors.telemetry.streams import StatsStreams  # noqa: E402
from messages.stats import CpuReading  # noqa: E402

BENCH_LABEL = "dockmon-bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- measurements ---------------------------------------------------------------------------


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found.append(int(entry))
    return found


def _daemon_cpu(pids: list[int]) -> float:
    return sum(_proc_cpu(p) for p in pids)


# --- the two designs (child process) --------------------------------------------------------


class Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.samples = 0
        self.errors = 0

    def add(self, n: int = 1) -> None:
        with self.lock:
            self.samples += n


def _emit(
    cid: str, raw: dict[str, Any], previous: CpuReading | None, own_previous: bool = False
) -> CpuReading | None:
    """The real per-sample work; ``own_previous``: one-shot samples carry no precpu_stats."""
    reading = container_reading(raw)
    if reading is None:
        return previous
    if own_previous:
        reading = dataclasses.replace(reading, precpu=previous)
    payload = container_stats_payload(
        container_id=cid,
        container_name=str(raw.get("name", "")).lstrip("/"),
        reading=reading,
        time_ns=time.time_ns(),
    )
    json.dumps(payload, separators=(",", ":"))
    return reading.cpu


def run_stream(host: str, ids: list[str], counter: Counter, stop: threading.Event) -> None:
    def one(cid: str) -> None:
        api = docker.APIClient(base_url=host, version="1.41", timeout=60)
        try:
            for raw in api.stats(cid, decode=True, stream=True):
                _emit(cid, raw, None)
                counter.add()
                if stop.is_set():
                    return
        except Exception:
            counter.errors += 1

    for cid in ids:
        threading.Thread(target=one, args=(cid,), daemon=True, name=f"stream-{cid[:8]}").start()


def run_poll(
    host: str, ids: list[str], workers: int, counter: Counter, stop: threading.Event
) -> None:
    jobs: queue.Queue[str] = queue.Queue()
    previous: dict[str, CpuReading | None] = dict.fromkeys(ids)
    in_flight: set[str] = set()
    lock = threading.Lock()

    def work() -> None:
        api = docker.APIClient(base_url=host, version="1.41", timeout=60)
        while not stop.is_set():
            try:
                cid = jobs.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                raw = api.get(
                    api._url("/containers/{0}/stats", cid),  # type: ignore[attr-defined]
                    params={"stream": "false", "one-shot": "true"},
                ).json()
                with lock:
                    prev = previous[cid]
                cpu = _emit(cid, raw, prev, own_previous=True)
                with lock:
                    previous[cid] = cpu
                counter.add()
            except Exception:
                counter.errors += 1
            finally:
                with lock:
                    in_flight.discard(cid)

    def tick() -> None:
        due = time.monotonic()
        while not stop.is_set():
            with lock:
                todo = [c for c in ids if c not in in_flight]
                in_flight.update(todo)
            for cid in todo:
                jobs.put(cid)
            due += 1.0
            stop.wait(max(0.0, due - time.monotonic()))

    for i in range(workers):
        threading.Thread(target=work, daemon=True, name=f"poll-{i}").start()
    threading.Thread(target=tick, daemon=True, name="poll-tick").start()


def run_asyncio(host: str, ids: list[str], counter: Counter) -> None:
    """actors/telemetry/streams.py: every stream on one asyncio thread."""

    def on_sample(cid: str, token: int, raw: dict[str, Any]) -> None:
        _emit(cid, raw, None)
        counter.add()

    def on_ended(cid: str, token: int, reason: str, gone: bool) -> None:
        counter.errors += 1

    streams = StatsStreams(host, on_sample=on_sample, on_ended=on_ended, on_listed=lambda *a: None)
    for i, cid in enumerate(ids):
        streams.open(cid, i)


def child(args: argparse.Namespace) -> None:
    ids = Path(args.ids_file).read_text().split()
    daemon_pids = [int(p) for p in args.daemon_pids.split(",") if p]
    counter, stop = Counter(), threading.Event()
    rss_before = _status("VmRSS")
    if args.child == "stream":
        run_stream(args.docker_host, ids, counter, stop)
    elif args.child == "asyncio":
        run_asyncio(args.docker_host, ids, counter)
    else:
        run_poll(args.docker_host, ids, args.workers, counter, stop)
    time.sleep(args.warmup)
    s0, c0, d0, t0 = counter.samples, _cpu_self(), _daemon_cpu(daemon_pids), time.monotonic()
    time.sleep(args.seconds)
    s1, c1, d1, t1 = counter.samples, _cpu_self(), _daemon_cpu(daemon_pids), time.monotonic()
    result = {
        "mode": args.child,
        "containers": len(ids),
        "samples": s1 - s0,
        "errors": counter.errors,
        "elapsed": t1 - t0,
        "agent_cpu_s": c1 - c0,
        "daemon_cpu_s": d1 - d0,
        "threads": _status("Threads"),
        "rss_kib": _status("VmRSS"),
        "rss_before_kib": rss_before,
    }
    print(json.dumps(result), flush=True)
    stop.set()
    os._exit(0)  # streaming threads are blocked in recv; don't wait for them


# --- orchestration (parent process) ---------------------------------------------------------


def measure(args: argparse.Namespace, mode: str, host: str, ids_file: str, pids: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--docker-host",
        host,
        "--ids-file",
        ids_file,
        "--daemon-pids",
        pids,
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
        "--workers",
        str(args.workers),
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    header = (
        f"{'design':<28} {'ctrs':>5} {'samples/ctr/s':>13} {'threads':>7} "
        f"{'agent CPU ms/sample':>19} {'agent CPU %':>11} {'RSS MiB':>8} "
        f"{'dockerd CPU %':>13} {'errors':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        samples = max(1, r["samples"])
        lines.append(
            f"{r['label']:<28} {r['containers']:>5} "
            f"{r['samples'] / r['containers'] / r['elapsed']:>13.2f} {r['threads']:>7} "
            f"{1000 * r['agent_cpu_s'] / samples:>19.3f} "
            f"{100 * r['agent_cpu_s'] / r['elapsed']:>11.1f} {r['rss_kib'] / 1024:>8.1f} "
            f"{100 * r['daemon_cpu_s'] / r['elapsed']:>13.1f} {r['errors']:>6}"
        )
    return "\n".join(lines)


def parent(args: argparse.Namespace) -> None:
    from tests.support.containers import TEST_LABEL, create_container
    from tests.support.daemon import PrivateDockerd
    from tests.support.images import DEFAULT_BUSYBOX_TAG, make_busybox_image

    with contextlib.ExitStack() as stack:
        if args.docker_host:
            host, daemon_pid = args.docker_host, args.daemon_pid
        else:
            daemon = stack.enter_context(PrivateDockerd())
            host, daemon_pid = daemon.base_url, daemon.pid
        client = docker.DockerClient(base_url=host, version="1.41", timeout=120)
        stack.callback(client.close)
        make_busybox_image(client, DEFAULT_BUSYBOX_TAG)
        containers: list[Any] = []

        def cleanup() -> None:
            for c in containers:
                with contextlib.suppress(Exception):
                    c.remove(force=True)

        stack.callback(cleanup)
        for _ in range(args.containers):
            c = create_container(
                client,
                DEFAULT_BUSYBOX_TAG,
                ["sleep", "3600"],
                network_mode="none",
                labels={BENCH_LABEL: "1", TEST_LABEL: "1"},
            )
            containers.append(c)
            c.start()
        pids = [daemon_pid, *_children(daemon_pid)] if daemon_pid else []
        ids_file = Path(os.environ.get("TMPDIR", "/tmp"), f"stats-bench-{os.getpid()}.ids")
        ids_file.write_text("\n".join(str(c.id) for c in containers))
        stack.callback(ids_file.unlink)
        pid_text = ",".join(str(p) for p in pids)
        idle = {"label": "idle (no stats)", "containers": args.containers}
        d0, t0 = _daemon_cpu(pids), time.monotonic()
        time.sleep(min(args.seconds, 5))
        idle.update(
            samples=0,
            errors=0,
            elapsed=time.monotonic() - t0,
            agent_cpu_s=0.0,
            daemon_cpu_s=_daemon_cpu(pids) - d0,
            threads=0,
            rss_kib=0,
        )
        results = [idle]
        for mode in args.modes.split(","):
            r = measure(args, mode, host, str(ids_file), pid_text)
            r["label"] = {
                "stream": "thread per stream (Go-like)",
                "poll": f"one-shot poll, {args.workers} workers",
                "asyncio": "asyncio streams, 1 thread",
            }[mode]
            results.append(r)
        print(table(results))
        print(
            f"\n{args.containers} busybox `sleep` containers, network none; {args.seconds:g} s "
            f"steady state after {args.warmup:g} s warm-up; {os.cpu_count()} CPUs. Agent CPU is "
            "user+sys of the measuring process; dockerd CPU includes its containerd."
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--containers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--modes", default="stream,poll,asyncio")
    parser.add_argument("--docker-host", default="")
    parser.add_argument("--daemon-pid", type=int, default=0)
    parser.add_argument("--child", choices=("stream", "poll", "asyncio"))
    parser.add_argument("--ids-file", default="")
    parser.add_argument("--daemon-pids", default="")
    args = parser.parse_args()
    if args.child:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
