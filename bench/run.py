"""Benchmarks for dockmon-agent, each figure beside a raw docker-py baseline from the same run.

The agent runs as a real process (``python -m agent_cli``) against a private dockerd and the fake
DockMon hub from tests/, exactly as in production but on loopback. Usage:

    python bench/run.py              # full run (about 15 minutes, including a 10-minute soak)
    python bench/run.py --smoke      # small counts, seconds: checks that every benchmark runs
    python bench/run.py --json out.json

Benchmarks are measurements, not tests: targets are printed beside the figures, and a missed
target is reported, never hidden. Run as root (private dockerd).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import docker  # noqa: E402

from actors.link.websocket import LinkSettings  # noqa: E402
from actors.runtime.docker_http import LeanDocker, lean_address  # noqa: E402
from tests.support.daemon import PrivateDockerd  # noqa: E402
from tests.support.hub import FakeHub  # noqa: E402
from tests.support.images import make_busybox_image  # noqa: E402

TOKEN = "0b6d1c2e-7f3a-4c19-8e2b-5a4d3c2b1a09"
FLOOR_TOKEN = "5d7f0e2a-1b9d-4e55-9a61-2f0c3d4b5e6f"
FLOOR_ENGINE = "f100f100-0000-4000-8000-00000000f100"
LABEL = {"dockmon-bench": "1"}
GRACEFUL = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]


@dataclass
class Row:
    name: str
    agent: str
    baseline: str
    target: str
    met: bool | None
    note: str = ""


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


@dataclass
class ProcStats:
    rss_mb: float
    threads: int
    cpu_s: float


def proc_stats(pid: int) -> ProcStats:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return ProcStats(
        rss_mb=int(fields["VmRSS"].split()[0]) / 1024,
        threads=int(fields["Threads"]),
        cpu_s=(int(stat[11]) + int(stat[12])) / ticks,
    )


def compile_bytecode() -> None:
    """Write the agent's .pyc files, as the image's ``pip install`` does.

    The image (and this environment) sets PYTHONDONTWRITEBYTECODE=1: without the bytecode every
    agent or healthcheck process measured here would compile the agent's modules from source,
    which an installed agent never does (``test_the_image_ships_bytecode_for_every_agent_module``).
    """
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {name.split(".")[0] for name in setuptools["packages"]["find"]["include"]}
    ok = all(compileall.compile_dir(REPO / name, quiet=1) for name in sorted(packages))
    ok &= all(compileall.compile_file(REPO / f"{m}.py", quiet=1) for m in setuptools["py-modules"])
    if not ok:
        raise SystemExit("cannot compile the agent's modules")


class Bench:
    """A private dockerd, the hub, and the agent as a subprocess."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.daemon = PrivateDockerd()
        # no hub pings: a relay frozen for the other's turn must not be dropped for a missed pong
        self.hub = FakeHub(ping_interval=None)
        self.floor_hub = FakeHub(ping_interval=None)  # the floor's own hub: requests go to it alone
        self.agent: subprocess.Popen[bytes] | None = None
        self.floor: subprocess.Popen[bytes] | None = None
        self.client: docker.DockerClient | None = None
        self.idle_rss: float | None = None  # idle connected RSS before any load (footprint)

    def __enter__(self) -> Bench:
        compile_bytecode()
        self.daemon.start()
        self.client = self.daemon.client()
        self.image = make_busybox_image(self.client)
        self.hub.start()
        self.hub.add_registration_token(TOKEN, multi_use=True)
        self.floor_hub.start()
        self.floor_hub.add_registration_token(FLOOR_TOKEN, multi_use=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_agent()
        self.stop_floor()
        self.hub.stop()
        self.floor_hub.stop()
        if self.client is not None:
            for c in self.client.containers.list(all=True, filters={"label": "dockmon-bench"}):
                with contextlib.suppress(docker.errors.DockerException):
                    c.remove(force=True)
            self.client.close()
        self.daemon.close()

    @property
    def docker(self) -> docker.DockerClient:
        assert self.client is not None
        return self.client

    def start_agent(self, **env: str) -> int:
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        environ = {
            **{k: v for k, v in os.environ.items() if not k.endswith("_PROXY")},
            "DOCKMON_URL": self.hub.url,
            "REGISTRATION_TOKEN": TOKEN,
            "DATA_PATH": str(data),
            "DOCKER_HOST": self.daemon.base_url,
            "LOG_JSON": "false",
            "LOG_LEVEL": "warning",
            "RECONNECT_INITIAL": "100ms",
            "RECONNECT_MAX": "1s",
            **env,
        }
        log = open(self.workdir / "agent.log", "ab")  # noqa: SIM115 (closed with the process)
        self.agent = subprocess.Popen(
            [sys.executable, "-m", "agent_cli"], cwd=REPO, env=environ, stdout=log, stderr=log
        )
        count = self.hub.connection_count
        self.hub.wait_registered(count=max(1, count), timeout=30)
        return self.agent.pid

    def stop_agent(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.terminate()
            self.agent.wait(15)
        self.agent = None

    def start_floor(self) -> None:
        """The bare relay (bench/floor.py) on its own hub: the floor every figure is set against."""
        log = open(self.workdir / "floor.log", "ab")  # noqa: SIM115 (closed with the process)
        self.floor = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "floor.py"), self.floor_hub.url, FLOOR_TOKEN,
             self.daemon.base_url, FLOOR_ENGINE],
            cwd=REPO, stdout=log, stderr=log,
        )  # fmt: skip
        self.floor_hub.wait_registered(count=self.floor_hub.connection_count or 1, timeout=30)

    def stop_floor(self) -> None:
        if self.floor is not None and self.floor.poll() is None:
            self.floor.kill()
            self.floor.wait(15)
        self.floor = None

    @contextlib.contextmanager
    def only(self, which: str) -> Iterator[None]:
        """Freeze the other relay (SIGSTOP) so the two never compete for the CPU; keep phases
        short (the hub's pings and the agent's 40 s dead-link rule run on wall-clock time)."""
        others = [self.floor] if which == "agent" else [self.agent]
        if which == "raw":  # a baseline process of its own: both relays wait
            others.append(self.floor)
        for other in others:
            if other is not None:
                other.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            for other in others:
                if other is not None:
                    other.send_signal(signal.SIGCONT)

    @property
    def pid(self) -> int:
        assert self.agent is not None
        return self.agent.pid

    def containers(self, n: int, *, start: bool) -> list[Any]:
        made = []
        for _ in range(n):
            c = self.docker.containers.create(
                self.image, GRACEFUL, network_mode="none", labels=LABEL
            )
            if start:
                c.start()
            made.append(c)
        return made

    def clear(self) -> None:
        for c in self.docker.containers.list(all=True, filters={"label": "dockmon-bench"}):
            c.remove(force=True)


@contextlib.contextmanager
def raw_listener(client: docker.DockerClient) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    """docker-py's own event stream: (arrival ns, event) — the baseline for event latency."""
    seen: list[tuple[int, dict[str, Any]]] = []
    stream = client.api.events(filters={"type": ["container"]}, decode=True)

    def pump() -> None:
        with contextlib.suppress(Exception):
            for event in stream:
                seen.append((time.time_ns(), event))

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stream.close()
        thread.join(2)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)


# --- benchmarks ----------------------------------------------------------------------------------


def _events_added(b: Bench, hub: FakeHub, cycles: int) -> tuple[list[float], list[float], str]:
    """Run ``cycles`` container lifecycles: per event, (added by the relay, raw docker-py), and
    the id of the last container (its ``destroy`` is the last event)."""
    start_index = len(hub.events)
    with raw_listener(b.docker) as raw:
        for _ in range(cycles):
            c = b.docker.containers.create(b.image, GRACEFUL, network_mode="none", labels=LABEL)
            c.start()
            c.kill()
            c.remove(force=True)
        wait_until(
            lambda: sum(1 for _, e in raw if e.get("Action") == "destroy") >= cycles, 60, "raw"
        )
        last_id = raw[-1][1]["Actor"]["ID"]
        _wait_for_event(hub, last_id, "destroy")
    by_key: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for arrived, e in raw:
        by_key[(e["Actor"]["ID"], e["Action"])].append((e["timeNano"], arrived))
    raw_lat, added = [], []
    used: dict[tuple[str, str], int] = defaultdict(int)
    for arrived, e in hub.events_with_arrival()[start_index:]:
        if e.get("command") != "container_event":
            continue
        key = (e["payload"]["container_id"], e["payload"]["action"])
        if used[key] >= len(by_key[key]):
            continue
        t_event, t_raw = by_key[key][used[key]]
        used[key] += 1
        raw_lat.append((t_raw - t_event) / 1e9)
        added.append((arrived - t_raw) / 1e9)
    return added, raw_lat, last_id


def _wait_for_event(hub: FakeHub, container_id: str, action: str) -> None:
    wait_until(
        lambda: any(
            e.get("command") == "container_event"
            and e["payload"]["container_id"] == container_id
            and e["payload"]["action"] == action
            for e in hub.events[-50:]
        ),
        60,
        f"{action} of {container_id[:12]} at the hub",
    )


def _wait_quiet(hub: FakeHub, quiet: float = 0.5, timeout: float = 60) -> None:
    """Until no event has reached ``hub`` for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    count, since = len(hub.events), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.05)
        if len(hub.events) != count:
            count, since = len(hub.events), time.monotonic()


def event_latency(b: Bench, events: int, rounds: int = 4) -> list[Row]:
    """Agent, floor and the floor with one thread hand-off take turns (the other relay frozen),
    ``rounds`` times, in one run; CPU per event is each relay's user+sys time during its own
    turns over the events it relayed."""
    cycles = max(1, events // 4 // rounds)  # create, start, kill, die, destroy per cycle
    agent, floor, handoff, raw = [], [], [], []
    agent_cpu = floor_cpu = 0.0
    assert b.floor is not None
    for _ in range(rounds):
        with b.only("agent"):
            before = proc_stats(b.pid).cpu_s
            added, raw_lat, last_id = _events_added(b, b.hub, cycles)
            agent_cpu += proc_stats(b.pid).cpu_s - before
            agent += added
            raw += raw_lat
        # the floor was frozen during the agent's turn: let it drain that backlog first (dockerd
        # may drop events for a subscriber that long frozen; the floor does not resubscribe)
        _wait_quiet(b.floor_hub)
        with b.only("floor"):
            before = proc_stats(b.floor.pid).cpu_s
            added, _, last_id = _events_added(b, b.floor_hub, cycles)
            floor_cpu += proc_stats(b.floor.pid).cpu_s - before
            floor += added
        _wait_for_event(b.hub, last_id, "destroy")  # the agent caught up: a short freeze each
        with b.only("floor"):
            _ok(b.floor_hub.command("floor_handoff", {"on": True}))
            added, _, last_id = _events_added(b, b.floor_hub, cycles)
            handoff += added
            _ok(b.floor_hub.command("floor_handoff", {"on": False}))
        _wait_for_event(b.hub, last_id, "destroy")
    r50, r99 = pct(agent, 50) / pct(floor, 50), pct(agent, 99) / pct(floor, 99)
    cpu_agent, cpu_floor = agent_cpu / max(1, len(agent)), floor_cpu / max(1, len(floor))
    return [
        Row(
            f"event latency added ({len(agent)} agent / {len(floor)} floor events)",
            f"p50 {ms(pct(agent, 50))}, p99 {ms(pct(agent, 99))}",
            f"floor p50 {ms(pct(floor, 50))}, p99 {ms(pct(floor, 99))}",
            "p50 <= 1.2x floor, p99 <= 1.5x floor",
            r50 <= 1.2 and r99 <= 1.5,
            f"agent/floor p50 {r50:.2f}, p99 {r99:.2f}; raw docker-py p50 {ms(pct(raw, 50))}; "
            f"bound: the floor with one thread hand-off p50 {ms(pct(handoff, 50))} = "
            f"{pct(handoff, 50) / pct(floor, 50):.2f}x floor",
        ),
        Row(
            "CPU per event relayed (user+sys, own turns)",
            f"{ms(cpu_agent)}/event",
            f"floor {ms(cpu_floor)}/event",
            "-",
            None,
            f"agent/floor {cpu_agent / cpu_floor if cpu_floor else float('nan'):.2f}",
        ),
    ]


def stats_cpu(b: Bench, containers: int, seconds: float) -> list[Row]:
    """CPU of the agent while ``containers`` running containers stream stats to the hub, beside
    the raw streams alone (bench/stats_design.py's asyncio child: the same Docker streams,
    decoded, turned into the payload and JSON-encoded, but no actors and no WebSocket)."""
    made = b.containers(containers, start=True)
    ids = {str(c.id) for c in made}

    def streaming() -> set[str]:
        return {
            e["payload"]["container_id"]
            for e in b.hub.events[-4 * containers :]
            if e.get("command") == "container_stats"
        }

    wait_until(lambda: ids <= streaming(), 120, f"stats of {containers} containers at the hub")
    time.sleep(2)  # past the streams' first samples; a measurement, not a test
    count = len(b.hub.events)
    before, t0 = proc_stats(b.pid).cpu_s, time.monotonic()
    time.sleep(seconds)
    agent_cpu, elapsed = proc_stats(b.pid).cpu_s - before, time.monotonic() - t0
    samples = sum(1 for e in b.hub.events[count:] if e.get("command") == "container_stats")
    agent_pct = 100 * agent_cpu / elapsed
    ids_file = b.workdir / "stats-ids"
    ids_file.write_text("\n".join(ids))
    with b.only("raw"):
        out = subprocess.run(
            [sys.executable, str(REPO / "bench" / "stats_design.py"), "--child", "asyncio",
             "--docker-host", b.daemon.base_url, "--ids-file", str(ids_file),
             "--seconds", str(seconds), "--warmup", "3"],
            check=True, capture_output=True, text=True, timeout=seconds + 120,
        )  # fmt: skip
    raw = json.loads(out.stdout.strip().splitlines()[-1])
    raw_pct = 100 * raw["agent_cpu_s"] / raw["elapsed"]
    b.clear()
    # a loaded dockerd sends fewer than one sample a second per container: the verdict also
    # holds the cost per sample to the full rate (containers samples a second)
    per_sample = agent_cpu / max(1, samples)
    at_full_rate = 100 * per_sample * containers
    raw_per_sample = raw["agent_cpu_s"] / max(1, raw["samples"])
    return [
        Row(
            f"stats: {containers} running containers streaming ({seconds:.0f} s)",
            f"{agent_pct:.1f} % of one core, {samples / elapsed:.0f} samples/s",
            f"raw streams {raw_pct:.1f} %, {raw['samples'] / raw['elapsed']:.0f} samples/s",
            "<= 5 % of one core",
            agent_pct <= 5 and at_full_rate <= 5,
            f"CPU per sample {ms(per_sample)} (raw {ms(raw_per_sample)}), agent/raw "
            f"{per_sample / raw_per_sample if raw_per_sample else float('nan'):.2f}; at "
            f"{containers} samples/s: {at_full_rate:.1f} %. raw: the same streams decoded and "
            "encoded, no actors, no WebSocket",
        )
    ]


def _roundtrips(b: Bench, n: int, calls: dict[str, Callable[[], object]]) -> dict[str, list[float]]:
    """Each call timed ``n`` times, interleaved (A B C A B C ...) so drift hits all alike."""
    for call in calls.values():  # warm up every path
        for _ in range(3):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(n):
        for name, call in calls.items():
            t = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t)
    return times


def _ok(response: Any) -> Any:
    assert response.ok, response
    return response


def _lean(b: Bench) -> LeanDocker:
    """The daemon alone: one raw GET on a kept-alive socket, the body left undecoded."""
    address = lean_address(b.daemon.base_url)
    assert address is not None
    return LeanDocker(address, timeout=60)


def _bound(t: dict[str, list[float]], direct: float) -> str:
    """What no agent can take away from a round trip: the hub and the WebSocket (the floor
    answering from its cache) plus the daemon's own answer (a raw GET)."""
    transport, daemon = pct(t["transport"], 50), pct(t["daemon"], 50)
    return (
        f"; bound: transport {ms(transport)} + daemon {ms(daemon)} = "
        f"{(transport + daemon) / direct:.2f}x direct before any agent work"
    )


def inspect_roundtrip(b: Bench, n: int) -> list[Row]:
    (c,) = b.containers(1, start=True)
    short = c.id[:12]
    lean = _lean(b)
    t = _roundtrips(
        b,
        n,
        {
            "agent": lambda: _ok(b.hub.container_op("inspect", short)),
            "floor": lambda: _ok(b.floor_hub.container_op("inspect", short)),
            "direct": lambda: b.docker.api.inspect_container(short),
            "transport": lambda: _ok(b.floor_hub.container_op("inspect", short, cached=True)),
            "daemon": lambda: lean.inspect_container_raw(short),
        },
    )
    lean.close()
    agent, floor, direct = (pct(t[k], 50) for k in ("agent", "floor", "direct"))
    b.clear()
    return [
        Row(
            f"inspect round trip via hub ({n}x)",
            f"p50 {ms(agent)}, p99 {ms(pct(t['agent'], 99))}",
            f"direct p50 {ms(direct)}; floor {ms(floor)}",
            "p50 <= 1.0x direct docker-py",
            agent <= direct,
            f"agent/direct {agent / direct:.2f}, floor/direct {floor / direct:.2f}, "
            f"agent/floor {agent / floor:.2f}" + _bound(t, direct),
        )
    ]


def list_roundtrip(b: Bench, containers: int, calls: int) -> list[Row]:
    b.containers(containers, start=False)
    b.hub.command("list_containers", timeout=120)  # first call fills the inspect cache

    def agent() -> None:
        result = _ok(b.hub.command("list_containers", timeout=60))
        assert len(result.data) >= containers

    lean = _lean(b)
    t = _roundtrips(
        b,
        calls,
        {
            "agent": agent,
            "floor": lambda: _ok(b.floor_hub.command("list_containers", timeout=60)),
            "direct": lambda: b.docker.api.containers(all=True),
            "transport": lambda: _ok(
                b.floor_hub.command("list_containers", {"cached": True}, timeout=60)
            ),
            "daemon": lambda: lean.containers_raw(all=True),
        },
    )
    lean.close()
    a, floor, direct = (pct(t[k], 50) for k in ("agent", "floor", "direct"))
    b.clear()
    return [
        Row(
            f"list_containers with {containers} containers ({calls}x)",
            f"p50 {ms(a)}",
            f"direct p50 {ms(direct)}; floor {ms(floor)}",
            "p50 <= 1.3x direct docker-py",
            a <= 1.3 * direct,
            f"agent/direct {a / direct:.2f}, floor/direct {floor / direct:.2f}, agent/floor "
            f"{a / floor:.2f} (the agent adds RepoDigests, StartedAt, Env from its cache)"
            + _bound(t, direct),
        )
    ]


def concurrency(b: Bench, inspects: int, stop_seconds: int) -> list[Row]:
    """Inspects while a stop blocks for ``stop_seconds`` (its container ignores SIGTERM) against
    as many inspects before it: the busy ones run for the whole stop, not its first fraction,
    and each p99 rests on ``inspects`` samples or more, not on its largest one or two."""
    others = b.containers(10, start=True)
    slow = b.docker.containers.run(
        b.image, ["sleep", "3600"], network_mode="none", labels=LABEL, detach=True
    )

    def inspect(i: int) -> float:
        t = time.perf_counter()
        assert b.hub.container_op("inspect", others[i % len(others)].id[:12]).ok
        return time.perf_counter() - t

    idle = [inspect(i) for i in range(inspects)]
    started = time.monotonic()
    stop_id = b.hub.send_container_operation("stop", str(slow.id)[:12], timeout=stop_seconds)
    busy: list[float] = []
    while time.monotonic() - started < stop_seconds - 0.5 or len(busy) < inspects:
        busy.append(inspect(len(busy)))
    during = time.monotonic() - started
    _ok(b.hub.wait_response(stop_id, timeout=stop_seconds + 30))
    stopped = time.monotonic() - started
    assert during < stopped, "the inspects outlasted the stop"
    ratio = pct(busy, 99) / pct(idle, 99)
    b.clear()
    return [
        Row(
            f"inspects during a {stop_seconds} s stop ({len(busy)} in {during:.1f} s)",
            f"p99 {ms(pct(busy, 99))}, max {ms(max(busy))}",
            f"{inspects} idle: p99 {ms(pct(idle, 99))}, max {ms(max(idle))}",
            "p99 <= 1.5x idle",
            ratio <= 1.5,
            f"ratio {ratio:.2f}; the stop replied after {stopped:.1f} s",
        )
    ]


def memory_idle(b: Bench) -> list[Row]:
    time.sleep(2)  # let start-up garbage settle; this is a measurement, not a test
    s = proc_stats(b.pid)
    return [
        Row(
            "RSS idle, connected, no containers",
            f"{s.rss_mb:.1f} MB, {s.threads} threads",
            "-",
            "<= 40 MB",
            s.rss_mb <= 40,
        )
    ]


#: the five runtime imports, in a bare interpreter: the floor for the agent's idle RSS
BARE_IMPORTS = (
    "import pykka, websocket, docker, yaml, colorlog, time; time.sleep(1.5); "
    "print(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1])"
)


def memory_footprint(b: Bench) -> list[Row]:
    """Idle connected RSS beside a bare interpreter with the five runtime imports."""
    time.sleep(2)  # let start-up garbage settle; this is a measurement, not a test
    s = proc_stats(b.pid)
    b.idle_rss = s.rss_mb  # the pre-peak level the peak row is judged by
    bare = int(subprocess.run([sys.executable, "-c", BARE_IMPORTS], capture_output=True,
                              text=True, check=True).stdout) / 1024  # fmt: skip
    return [
        Row(
            "RSS idle, connected, vs the bare runtime imports",
            f"{s.rss_mb:.1f} MB, {s.threads} threads",
            f"bare imports {bare:.1f} MB",
            "<= 36 MB",
            s.rss_mb <= 36,
            f"agent - bare {s.rss_mb - bare:+.1f} MB (pykka, websocket, docker, yaml, colorlog)",
        )
    ]


#: runs argv[1:] and prints "<peak RSS KB> <wall s> <exit code>"; a small launcher, because a
#: child forked straight from this (large) process would count our pages in its peak RSS
LAUNCHER = (
    "import os, sys, time\n"
    "t = time.perf_counter()\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    fd = os.open(os.devnull, os.O_WRONLY); os.dup2(fd, 1)\n"
    "    os.execv(sys.argv[1], sys.argv[1:])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "print(usage.ru_maxrss, time.perf_counter() - t, os.waitstatus_to_exitcode(status))\n"
)


def healthcheck_runs(b: Bench, runs: int) -> list[Row]:
    """``dockmon-agent healthcheck`` as Docker runs it: a fresh process each time (peak RSS
    from wait4, wall time from fork to exit), against the running agent's status file."""
    env = {**os.environ, "DATA_PATH": str(b.workdir / "data")}
    env.pop("DOCKMON_CONFIG", None)

    def launch(*argv: str) -> tuple[float, float, int]:
        command = [sys.executable, "-c", LAUNCHER, sys.executable, *argv]
        out = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, check=True
        ).stdout
        kb, wall, code = out.split()
        return int(kb) / 1024, float(wall), int(code)

    checks = [launch("-m", "agent_cli", "healthcheck") for _ in range(runs)]
    bare = [launch("-c", "pass") for _ in range(max(3, runs // 4))]
    rss, wall = [c[0] for c in checks], [c[1] for c in checks]
    return [
        Row(
            f"healthcheck process ({runs} runs)",
            f"RSS p50 {pct(rss, 50):.1f} MB, max {max(rss):.1f}; wall p50 {ms(pct(wall, 50))}, "
            f"max {ms(max(wall))}",
            f"bare interpreter {pct([c[0] for c in bare], 50):.1f} MB, "
            f"{ms(pct([c[1] for c in bare], 50))}",
            "<= 16 MB and <= 150 ms",
            pct(rss, 50) <= 16 and pct(wall, 50) <= 0.150,
            f"exit codes {sorted({c[2] for c in checks})} (0: healthy)",
        )
    ]


def memory_after_peak(b: Bench, containers: int, running: int, settle: float = 35) -> list[Row]:
    """RSS before, at and after a peak: ``containers`` listed through the hub while ``running``
    of them stream stats; then all are removed and the agent is left alone for ``settle`` s
    (streams end, caches drop them, a Docker probe, every 30 s, trims the heap)."""
    time.sleep(2)
    before = proc_stats(b.pid).rss_mb
    # the level to come back to: idle before any load when the footprint row ran first (earlier
    # rows, the 1,000-container list above all, leave the agent above it)
    level = b.idle_rss if b.idle_rss is not None else before
    b.containers(running, start=True)
    b.containers(containers - running, start=False)
    for _ in range(3):
        result = _ok(b.hub.command("list_containers", timeout=120))
        assert len(result.data) >= containers
    time.sleep(min(5, settle))  # the stats streams of the running ones are open and sampling
    peak = proc_stats(b.pid).rss_mb
    b.clear()
    _ok(b.hub.command("list_containers", timeout=60))
    time.sleep(settle)
    after = proc_stats(b.pid).rss_mb
    return [
        Row(
            f"RSS after a peak ({containers} listed, {running} streaming stats)",
            f"after {after:.1f} MB ({after - level:+.1f} vs idle)",
            f"idle {level:.1f} MB; before {before:.1f}; peak {peak:.1f}",
            "<= idle + 5 MB",
            after <= level + 5,
        )
    ]


def recovery(b: Bench) -> list[Row]:
    count = b.hub.connection_count
    b.hub.refuse(True)
    b.hub.drop()
    b.hub.wait_disconnected()
    time.sleep(3)  # let the backoff grow to its cap (RECONNECT_MAX=1s)
    registered = sum(1 for a in b.hub.auth_log if a.ok)
    t = time.monotonic()
    b.hub.refuse(False)
    b.hub.wait_registered(count=registered + 1, timeout=30)
    took = time.monotonic() - t
    return [
        Row(
            "hub back -> agent registered",
            f"{took * 1000:.0f} ms",
            "backoff cap 1000 ms",
            "<= backoff + 100 ms",
            took <= 1.1,
            f"{b.hub.connection_count - count} connection attempts while refused",
        )
    ]


#: the agent's default: a pong confirms once the link has outlived it by this much (delivery.py)
CONFIRM_MARGIN = LinkSettings(url="ws://127.0.0.1").confirm_margin


def reconnect_storm(b: Bench, seconds: float, ops: int) -> list[Row]:
    targets = b.containers(10, start=True)
    ids = {c.id for c in targets}
    wait_until(  # their own start events are in before the storm's baseline is taken
        lambda: (
            len(
                {
                    e["payload"]["container_id"]
                    for e in b.hub.events
                    if e.get("command") == "container_event" and e["payload"]["action"] == "start"
                }
                & ids
            )
            == len(ids)
        ),
        30,
        "start events of the storm's targets",
    )
    start_index = len(b.hub.events)
    stop = threading.Event()
    drops = 0

    def storm() -> None:
        """A drop every 200 ms; FakeHub.drop() may wait seconds for the close handshake, so
        each one runs on its own thread and the storm keeps its pace."""
        nonlocal drops
        while not stop.wait(0.2):
            threading.Thread(target=b.hub.drop, daemon=True).start()
            drops += 1

    with raw_listener(b.docker) as raw:
        t0 = time.time_ns()
        storm_thread = threading.Thread(target=storm, daemon=True)
        storm_thread.start()
        sent: list[str] = []
        deadline = time.monotonic() + seconds
        i = 0
        while len(sent) < ops or time.monotonic() < deadline:
            if len(sent) < ops:
                c = targets[i % len(targets)]
                with contextlib.suppress(Exception):
                    sent.append(b.hub.send_container_operation("restart", c.id[:12], timeout=1))
                i += 1
            time.sleep(seconds / max(ops, 1))
        stop.set()
        storm_thread.join()
        done = 0
        for request in sent:
            with contextlib.suppress(Exception):
                if b.hub.wait_response(request, timeout=60).ok:
                    done += 1

        def tally() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
            want = sorted(
                (e["Actor"]["ID"], e["Action"])
                for at, e in list(raw)
                if e["Actor"]["ID"] in ids and at > t0
            )
            got = sorted(
                (e["payload"]["container_id"], e["payload"]["action"])
                for e in b.hub.events[start_index:]
                if e.get("command") == "container_event" and e["payload"]["container_id"] in ids
            )
            return want, got

        def missing(want: list[tuple[str, str]], got: list[tuple[str, str]]) -> int:
            return len([1 for k in set(want) if want.count(k) > got.count(k)])

        # the trailing events reach the hub after the last reconnect: wait for them (up to 30 s,
        # then what is missing counts as lost), and say how long the last one took
        settle_start = time.monotonic()
        while missing(*tally()) and time.monotonic() - settle_start < 30:
            time.sleep(0.1)
        settled = time.monotonic() - settle_start
        time.sleep(1)  # a duplicate would come with the replay just seen: give it a moment
        want, got = tally()
    lost = missing(want, got)
    gone = sorted({(k[0][:12], k[1]) for k in want if want.count(k) > got.count(k)})
    dup = sum(got.count(k) - want.count(k) for k in set(got) if got.count(k) > want.count(k))
    b.clear()
    return [
        Row(
            f"reconnect storm ({drops} drops in {seconds:.0f} s, {len(sent)} restarts sent)",
            f"{done}/{len(sent)} replies delivered; events lost {lost}, duplicated {dup}",
            f"raw listener saw {len(want)} events",
            "all complete, 0 lost",
            done == len(sent) and lost == 0,
            f"the last event in {settled:.1f} s after the replies"
            + (f"; missing {gone}" if gone else "")
            + "; events and replies are kept until the link outlives the pong after them by "
            f"{CONFIRM_MARGIN:g} s; those a drop left in doubt go again once a link lives that "
            "long (the duplicates: at-least-once)",
        )
    ]


def soak(b: Bench, seconds: float) -> list[Row]:
    (c,) = b.containers(1, start=True)
    before = proc_stats(b.pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        b.hub.container_op("restart", c.id[:12], timeout=30)
        b.hub.command("list_containers")
        time.sleep(0.5)
    after = proc_stats(b.pid)
    drift = after.rss_mb - before.rss_mb
    b.clear()
    return [
        Row(
            f"RSS drift over a {seconds / 60:.1f}-minute soak (restarts + lists)",
            f"{drift:+.1f} MB ({before.rss_mb:.1f} -> {after.rss_mb:.1f})",
            "-",
            "<= 2 MB",
            drift <= 2,
            f"threads {before.threads} -> {after.threads}",
        )
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts: check that all run")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--only",
        help="comma-separated subset: memory, footprint, healthcheck, latency, stats, inspect, "
        "list, list1000, concurrency, recovery, storm, peak, soak",
    )
    args = parser.parse_args()
    smoke = args.smoke
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="dmbench-") as tmp, Bench(Path(tmp)) as b:
        b.start_agent()
        b.start_floor()
        plan: list[tuple[str, Callable[[], list[Row]]]] = [
            ("memory", lambda: memory_idle(b)),
            ("footprint", lambda: memory_footprint(b)),
            ("healthcheck", lambda: healthcheck_runs(b, 5 if smoke else 20)),
            ("latency", lambda: event_latency(b, 40 if smoke else 800, 2 if smoke else 4)),
            ("stats", lambda: stats_cpu(b, 10 if smoke else 200, 3 if smoke else 15)),
            ("inspect", lambda: inspect_roundtrip(b, 20 if smoke else 500)),
            ("list", lambda: list_roundtrip(b, 10 if smoke else 200, 3 if smoke else 20)),
            ("list1000", lambda: list_roundtrip(b, 20 if smoke else 1000, 3 if smoke else 10)),
            ("concurrency", lambda: concurrency(b, 10 if smoke else 2000, 2 if smoke else 10)),
            ("recovery", lambda: recovery(b)),
            ("storm", lambda: reconnect_storm(b, 2 if smoke else 30, 5 if smoke else 100)),
            ("peak", lambda: memory_after_peak(b, *((20, 5, 2) if smoke else (1000, 200, 35)))),
            ("soak", lambda: soak(b, 3 if smoke else 600)),
        ]
        names = args.only.split(",") if args.only else [name for name, _ in plan]
        only = {n.strip() for n in names}
        for name, run in plan:
            if name in only:
                rows += run()
    width = max(len(r.name) for r in rows)
    print(f"\n{'benchmark':<{width}}  {'agent':<40}  {'baseline':<36}  target")
    for r in rows:
        verdict = "met" if r.met else ("MISSED" if r.met is False else "-")
        print(f"{r.name:<{width}}  {r.agent:<40}  {r.baseline:<36}  {r.target} [{verdict}]")
        if r.note:
            print(f"{'':<{width}}    {r.note}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
