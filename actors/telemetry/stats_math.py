"""Pure stats formulas (PROTOCOL §5.2 container stats, §5.3 host stats); no threads, no Docker.

Container stats: the Docker stats JSON of one sample -> :class:`ContainerReading` (the numbers
that matter, immutable) -> the ``container_stats`` payload, with the CPU percentage computed
against the previous reading. Host stats: ``proc/stat``, ``proc/meminfo`` and
``sys/class/net`` under injectable roots -> :class:`HostStatsSampler`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from messages.records import record
from messages.stats import ContainerReading, CpuReading
from messages.timefmt import utc_seconds

#: Docker's "never" time: the ``read`` of a sample for a container that is not running
ZERO_TIME_PREFIX = "0001-01-01"


def round1(value: float) -> float:
    """Half-up to one decimal, exactly like the Go agent's ``RoundToDecimal(v, 1)``.

    ``float64(int(v*10+0.5)) / 10``: ``int`` truncates toward zero, like Go's conversion.
    """
    return float(int(value * 10 + 0.5)) / 10


def _uint(value: Any) -> int:
    """A Docker counter (uint64 in Go); null, missing or junk counts as 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(0, int(value))


# --- container stats (§5.2) -----------------------------------------------------------------


def online_cpus(cpu_stats: Mapping[str, Any]) -> int:
    """``online_cpus``, falling back to the per-CPU array length, then 1."""
    online = _uint(cpu_stats.get("online_cpus"))
    if online > 0:
        return online
    usage = cpu_stats.get("cpu_usage") or {}
    percpu = usage.get("percpu_usage") if isinstance(usage, Mapping) else None
    count = len(percpu) if isinstance(percpu, list) else 0
    return count or 1


def cpu_reading(cpu_stats: Mapping[str, Any] | None) -> CpuReading:
    stats = cpu_stats or {}
    usage = stats.get("cpu_usage") or {}
    total = _uint(usage.get("total_usage")) if isinstance(usage, Mapping) else 0
    return CpuReading(
        total=total, system=_uint(stats.get("system_cpu_usage")), online_cpus=online_cpus(stats)
    )


def cpu_percent(current: CpuReading, previous: CpuReading | None) -> float:
    """``(Δcontainer / Δsystem) x online_cpus x 100``; 0 when a delta is <= 0 (not rounded).

    Without a previous reading there is no delta, so the result is 0.
    """
    if previous is None:
        return 0.0
    cpu_delta = float(current.total) - float(previous.total)
    system_delta = float(current.system) - float(previous.system)
    if system_delta > 0.0 and cpu_delta > 0.0:
        return (cpu_delta / system_delta) * float(current.online_cpus) * 100.0
    return 0.0


def cpu_percent_of_sample(sample: Mapping[str, Any]) -> float:
    """The §5.2 CPU formula on one streamed sample, whose previous reading is ``precpu_stats``."""
    return cpu_percent(
        cpu_reading(sample.get("cpu_stats")), cpu_reading(sample.get("precpu_stats"))
    )


def working_set(memory_stats: Mapping[str, Any] | None) -> int:
    """cgroup v2: anon + active_file (or anon alone); v1: usage - inactive_file; else usage."""
    memory = memory_stats or {}
    usage = _uint(memory.get("usage"))
    stats = memory.get("stats")
    if not isinstance(stats, Mapping):
        return usage
    if "anon" in stats:
        anon = _uint(stats["anon"])
        if "active_file" in stats:
            return anon + _uint(stats["active_file"])
        return anon
    if "inactive_file" in stats:
        inactive = _uint(stats["inactive_file"])
        if usage > inactive:
            return usage - inactive
    return usage


def network_totals(networks: Mapping[str, Any] | None) -> tuple[int, int]:
    """Cumulative (rx_bytes, tx_bytes) summed over every interface."""
    rx = tx = 0
    for iface in (networks or {}).values():
        if isinstance(iface, Mapping):
            rx += _uint(iface.get("rx_bytes"))
            tx += _uint(iface.get("tx_bytes"))
    return rx, tx


def blkio_totals(blkio_stats: Mapping[str, Any] | None) -> tuple[int, int]:
    """Cumulative (Read, Write) bytes from ``io_service_bytes_recursive``."""
    read = write = 0
    entries = (blkio_stats or {}).get("io_service_bytes_recursive") or []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, Mapping):
            continue
        op = entry.get("op")
        if op == "Read":
            read += _uint(entry.get("value"))
        elif op == "Write":
            write += _uint(entry.get("value"))
    return read, write


def is_running_sample(sample: Mapping[str, Any]) -> bool:
    """Docker answers a stopped container's stats with ``read`` = year 1 and zeros."""
    read = sample.get("read")
    return isinstance(read, str) and bool(read) and not read.startswith(ZERO_TIME_PREFIX)


def container_reading(sample: Mapping[str, Any]) -> ContainerReading | None:
    """The numbers of one Docker stats sample; None if the container is not running."""
    if not is_running_sample(sample):
        return None
    memory = sample.get("memory_stats")
    memory = memory if isinstance(memory, Mapping) else {}
    networks = sample.get("networks")
    blkio = sample.get("blkio_stats")
    rx, tx = network_totals(networks if isinstance(networks, Mapping) else None)
    disk_read, disk_write = blkio_totals(blkio if isinstance(blkio, Mapping) else None)
    cpu_stats = sample.get("cpu_stats")
    precpu_stats = sample.get("precpu_stats")
    precpu = cpu_reading(precpu_stats if isinstance(precpu_stats, Mapping) else None)
    return ContainerReading(
        cpu=cpu_reading(cpu_stats if isinstance(cpu_stats, Mapping) else None),
        # The first sample of a stream has an empty precpu_stats: no delta yet, so 0% rather
        # than the container's lifetime share of the host's uptime.
        precpu=precpu if precpu.system > 0 else None,
        memory_usage=working_set(memory),
        memory_limit=_uint(memory.get("limit")),
        network_rx=rx,
        network_tx=tx,
        disk_read=disk_read,
        disk_write=disk_write,
    )


def container_stats_payload(
    *,
    container_id: str,
    container_name: str,
    reading: ContainerReading,
    time_ns: int,
) -> dict[str, Any]:
    """The ``container_stats`` payload (also the stats-ingest message), keys in §5.2 order."""
    limit = reading.memory_limit
    memory_percent = reading.memory_usage / limit * 100.0 if limit > 0 else 0.0
    return {
        "container_id": container_id,
        "container_name": container_name,
        "cpu_percent": round1(cpu_percent(reading.cpu, reading.precpu)),
        "memory_usage": reading.memory_usage,
        "memory_limit": limit,
        "memory_percent": round1(memory_percent),
        "network_rx": reading.network_rx,
        "network_tx": reading.network_tx,
        "disk_read": reading.disk_read,
        "disk_write": reading.disk_write,
        "timestamp": utc_seconds(time_ns),
    }


# --- host stats (§5.3) ----------------------------------------------------------------------

#: interfaces never counted: loopback and virtual/container devices
VIRTUAL_PREFIXES = (
    "veth",
    "br-",
    "docker",
    "virbr",
    "vnet",
    "tun",
    "tap",
    "dummy",
    "gre",
    "sit",
    "ip6tnl",
    "vxlan",
    "flannel",
    "cni",
    "cali",
    "weave",
)


def is_virtual_interface(name: str) -> bool:
    return name == "lo" or name.startswith(VIRTUAL_PREFIXES)


@record
class HostCpu:
    """Aggregate ``cpu`` line of ``proc/stat``: total (8 fields) and idle + iowait, in ticks."""

    total: int
    idle: int


def parse_proc_stat(text: str) -> HostCpu | None:
    for line in text.splitlines():
        if line.startswith("cpu "):
            fields = line.split()
            if len(fields) < 8:
                continue
            values = [int(v) if v.isdigit() else 0 for v in fields[1:9]]
            values += [0] * (8 - len(values))  # steal may be missing on old kernels
            user, nice, system, idle, iowait, irq, softirq, steal = values
            total = user + nice + system + idle + iowait + irq + softirq + steal
            return HostCpu(total=total, idle=idle + iowait)
    return None


def host_cpu_percent(current: HostCpu, previous: HostCpu | None) -> float:
    """busy = Δtotal - Δ(idle + iowait), as a percentage of Δtotal; 0 without a delta."""
    if previous is None:
        return 0.0
    total_delta = current.total - previous.total
    idle_delta = current.idle - previous.idle
    if total_delta <= 0:
        return 0.0
    return (total_delta - idle_delta) / total_delta * 100.0


def parse_meminfo(text: str) -> float | None:
    """``(MemTotal - MemAvailable) / MemTotal x 100``; None without MemTotal."""
    total = available = 0
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or not fields[1].isdigit():
            continue
        if fields[0] == "MemTotal:":
            total = int(fields[1])
        elif fields[0] == "MemAvailable:":
            available = int(fields[1])
    if total <= 0:
        return None
    used = total - available if available <= total else 0
    return used / total * 100.0


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


def read_net_counters(sys_root: str) -> dict[str, tuple[int, int]]:
    """(rx_bytes, tx_bytes) of every counted interface in ``<sys_root>/class/net``."""
    net = Path(sys_root, "class", "net")
    try:
        names = sorted(os.listdir(net))
    except OSError:
        return {}
    counters: dict[str, tuple[int, int]] = {}
    for name in names:
        if is_virtual_interface(name):
            continue
        state = _read_text(net / name / "operstate")
        if state is not None and state.strip() not in ("up", "unknown"):
            continue  # unreadable operstate counts as up, like the Go agent

        def counter(which: str, name: str = name) -> int:
            text = _read_text(net / name / "statistics" / which)
            value = (text or "").strip()
            return int(value) if value.isdigit() else 0

        counters[name] = (counter("rx_bytes"), counter("tx_bytes"))
    return counters


def net_bytes_per_sec(
    current: Mapping[str, tuple[int, int]],
    previous: Mapping[str, tuple[int, int]] | None,
    elapsed: float,
) -> float:
    """Σ(Δrx + Δtx)/Δt over interfaces seen both times; counters that went backwards skip."""
    if previous is None or elapsed <= 0:
        return 0.0
    total = 0.0
    for name, (rx, tx) in current.items():
        before = previous.get(name)
        if before is None:
            continue
        prev_rx, prev_tx = before
        if rx < prev_rx or tx < prev_tx:
            continue
        total += (rx - prev_rx + tx - prev_tx) / elapsed
    return total


@record
class HostRoots:
    proc: str
    sys: str


def host_roots(own_container_id: str | None, host_prefix: str = "/host") -> HostRoots | None:
    """PROTOCOL §5.3: native mode reads /proc and /sys; in a container only with /host/proc.

    ``/host/sys`` is used when it has ``class/net``; otherwise the container's own /sys (whose
    interfaces are the container's, as in the Go agent).
    """
    host_proc = Path(host_prefix, "proc")
    host_sys = Path(host_prefix, "sys")
    proc = str(host_proc) if (host_proc / "stat").exists() else None
    sys_root = str(host_sys) if (host_sys / "class" / "net").exists() else "/sys"
    if proc is not None:
        return HostRoots(proc=proc, sys=sys_root)
    if own_container_id is not None:
        return None
    return HostRoots(proc="/proc", sys="/sys")


class HostStatsSampler:
    """Keeps the previous counters; :meth:`sample` returns the ``stats`` object of §5.3.

    :meth:`reset` makes the next sample a baseline again (CPU and network 0), as after a connect.
    """

    def __init__(self, roots: HostRoots) -> None:
        self.roots = roots
        self._cpu: HostCpu | None = None
        self._net: dict[str, tuple[int, int]] | None = None
        self._at: float | None = None

    def reset(self) -> None:
        self._cpu, self._net, self._at = None, None, None

    def sample(self, now: float) -> dict[str, float] | None:
        """None when ``proc/stat`` or ``proc/meminfo`` cannot be read (nothing is sent)."""
        stat_text = _read_text(Path(self.roots.proc, "stat"))
        meminfo_text = _read_text(Path(self.roots.proc, "meminfo"))
        cpu = parse_proc_stat(stat_text) if stat_text is not None else None
        mem = parse_meminfo(meminfo_text) if meminfo_text is not None else None
        net = read_net_counters(self.roots.sys)
        elapsed = now - self._at if self._at is not None else 0.0
        rate = net_bytes_per_sec(net, self._net, elapsed)
        cpu_pct = host_cpu_percent(cpu, self._cpu) if cpu is not None else 0.0
        self._net, self._at = net, now
        if cpu is not None:
            self._cpu = cpu
        if cpu is None or mem is None:
            return None
        return {"cpu_percent": cpu_pct, "mem_percent": mem, "net_bytes_per_sec": rate}
