"""Unit tests of the pure stats formulas (PROTOCOL §5.2, §5.3) on recorded Docker stats JSON
and fixture /proc and /sys trees."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from actors.telemetry.stats_math import (
    HostRoots,
    HostStatsSampler,
    blkio_totals,
    container_reading,
    container_stats_payload,
    cpu_percent,
    cpu_percent_of_sample,
    host_cpu_percent,
    host_roots,
    is_virtual_interface,
    net_bytes_per_sec,
    network_totals,
    online_cpus,
    parse_meminfo,
    parse_proc_stat,
    round1,
    working_set,
)
from messages.stats import CpuReading
from tests.support.hub_events import container_stats_problem

# A real streamed sample from dockerd 20.10 (API 1.41, cgroup v1, 2 CPUs): busybox spinning one
# CPU after writing 20 MiB to /tmp (page cache -> inactive_file). Recorded with
# ``docker.APIClient.stats(id, stream=True, decode=True)``; network none, so no "networks".
V1_SAMPLE: dict[str, Any] = json.loads(
    '{"read":"2026-11-27T02:08:44.190584219Z","preread":"2026-11-27T02:08:43.186924523Z","pid'
    's_stats":{"current":1},"blkio_stats":{"io_service_bytes_recursive":[],"io_serviced_recur'
    'sive":[],"io_queue_recursive":[],"io_service_time_recursive":[],"io_wait_time_recursive"'
    ':[],"io_merged_recursive":[],"io_time_recursive":[],"sectors_recursive":[]},"num_procs":'
    '0,"storage_stats":{},"cpu_stats":{"cpu_usage":{"total_usage":7206215178,"percpu_usage":['
    '3490890272,3715324906],"usage_in_kernelmode":40000000,"usage_in_usermode":7160000000},"s'
    'ystem_cpu_usage":3651600000000,"online_cpus":2,"throttling_data":{"periods":0,"throttled'
    '_periods":0,"throttled_time":0}},"precpu_stats":{"cpu_usage":{"total_usage":6201716960,"'
    'percpu_usage":[3490890272,2710826688],"usage_in_kernelmode":40000000,"usage_in_usermode"'
    ':6150000000},"system_cpu_usage":3649600000000,"online_cpus":2,"throttling_data":{"period'
    's":0,"throttled_periods":0,"throttled_time":0}},"memory_stats":{"usage":21893120,"max_us'
    'age":23588864,"stats":{"active_anon":4096,"active_file":4096,"cache":20975616,"dirty":0,'
    '"hierarchical_memory_limit":9223372036854771712,"hierarchical_memsw_limit":9223372036854'
    '771712,"inactive_anon":57344,"inactive_file":20971520,"mapped_file":0,"pgfault":1430,"pg'
    'majfault":0,"pgpgin":1135,"pgpgout":1099,"rss":61440,"rss_huge":0,"total_active_anon":40'
    '96,"total_active_file":4096,"total_cache":20975616,"total_dirty":0,"total_inactive_anon"'
    ':57344,"total_inactive_file":20971520,"total_mapped_file":0,"total_pgfault":1430,"total_'
    'pgmajfault":0,"total_pgpgin":1135,"total_pgpgout":1099,"total_rss":61440,"total_rss_huge'
    '":0,"total_unevictable":0,"total_writeback":0,"unevictable":0,"writeback":0},"limit":252'
    '76502016},"name":"/flamboyant_mcclintock","id":"6d5ab9a11a3d7c98abfcce0ee5e27aa146aac9af'
    '5cc8ffc8b1dd32a6a19650e7"}'
)

# The shape of a cgroup v2 sample (Docker 24, containerd cgroup v2): no percpu_usage, memory
# "stats" from memory.stat with anon/file/active_file/inactive_file, blkio lower-case ops too.
V2_SAMPLE: dict[str, Any] = {
    "read": "2026-07-13T20:05:01.123456789Z",
    "preread": "2026-07-13T20:05:00.120000000Z",
    "name": "/web",
    "id": "3f9a" + "0" * 60,
    "cpu_stats": {
        "cpu_usage": {
            "total_usage": 5_250_000_000,
            "usage_in_kernelmode": 1,
            "usage_in_usermode": 2,
        },
        "system_cpu_usage": 100_000_000_000,
        "online_cpus": 4,
    },
    "precpu_stats": {
        "cpu_usage": {"total_usage": 5_000_000_000},
        "system_cpu_usage": 96_000_000_000,
        "online_cpus": 4,
    },
    "memory_stats": {
        "usage": 90_000_000,
        "limit": 2_147_483_648,
        "stats": {
            "anon": 50_000_000,
            "file": 38_000_000,
            "active_file": 20_000_000,
            "inactive_file": 18_000_000,
        },
    },
    "networks": {
        "eth0": {"rx_bytes": 1_000_000, "tx_bytes": 500_000, "rx_packets": 10},
        "eth1": {"rx_bytes": 48_576, "tx_bytes": 24_288},
    },
    "blkio_stats": {
        "io_service_bytes_recursive": [
            {"major": 8, "minor": 0, "op": "read", "value": 1},
            {"major": 8, "minor": 0, "op": "Read", "value": 4096},
            {"major": 8, "minor": 0, "op": "Write", "value": 8192},
            {"major": 8, "minor": 16, "op": "Read", "value": 4096},
            {"major": 8, "minor": 16, "op": "Total", "value": 99999},
        ]
    },
}

# --- container stats (§5.2) -------------------------------------------------------------------


def test_cpu_percent_of_the_recorded_v1_sample() -> None:
    # (7206215178 - 6201716960) / (3651600000000 - 3649600000000) * 2 * 100 = 100.4498218
    assert cpu_percent_of_sample(V1_SAMPLE) == pytest.approx(100.4498218)
    reading = container_reading(V1_SAMPLE)
    assert reading is not None
    payload = container_stats_payload(
        container_id="c" * 64, container_name="spin", reading=reading, time_ns=0
    )
    assert payload["cpu_percent"] == 100.4  # can exceed 100, rounded to 1 decimal


def test_v1_memory_is_usage_minus_inactive_file() -> None:
    reading = container_reading(V1_SAMPLE)
    assert reading is not None
    assert reading.memory_usage == 21_893_120 - 20_971_520
    assert reading.memory_limit == 25_276_502_016
    payload = container_stats_payload(
        container_id="c" * 64, container_name="spin", reading=reading, time_ns=0
    )
    assert payload["memory_percent"] == 0.0  # 921600 / 25 GB = 0.0036 %


def test_v2_sample_whole_payload() -> None:
    reading = container_reading(V2_SAMPLE)
    assert reading is not None
    payload = container_stats_payload(
        container_id="3f9a" + "0" * 60,
        container_name="web",
        reading=reading,
        time_ns=1_783_973_101_999_999_999,
    )
    assert payload == {
        "container_id": "3f9a" + "0" * 60,
        "container_name": "web",
        "cpu_percent": 25.0,  # 250e6 / 4e9 * 4 * 100
        "memory_usage": 70_000_000,  # anon + active_file
        "memory_limit": 2_147_483_648,
        "memory_percent": 3.3,  # 3.2596...
        "network_rx": 1_048_576,
        "network_tx": 524_288,
        "disk_read": 8192,  # "Read" only, case-sensitive like the Go agent
        "disk_write": 8192,
        "timestamp": "2026-07-13T20:05:01Z",  # whole seconds, truncated
    }
    assert list(payload) == [
        "container_id",
        "container_name",
        "cpu_percent",
        "memory_usage",
        "memory_limit",
        "memory_percent",
        "network_rx",
        "network_tx",
        "disk_read",
        "disk_write",
        "timestamp",
    ]
    assert container_stats_problem(payload) is None


def test_working_set_variants() -> None:
    assert working_set({"usage": 100, "stats": {"anon": 30, "active_file": 5}}) == 35
    assert working_set({"usage": 100, "stats": {"anon": 30, "inactive_file": 50}}) == 30
    assert working_set({"usage": 100, "stats": {"inactive_file": 40}}) == 60
    assert working_set({"usage": 100, "stats": {"inactive_file": 400}}) == 100  # no underflow
    assert working_set({"usage": 100, "stats": {"cache": 40}}) == 100  # raw usage
    assert working_set({"usage": 100}) == 100
    assert working_set({}) == 0
    assert working_set(None) == 0


def test_memory_percent_is_zero_without_a_limit() -> None:
    sample = copy.deepcopy(V2_SAMPLE)
    sample["memory_stats"]["limit"] = 0
    reading = container_reading(sample)
    assert reading is not None
    payload = container_stats_payload(
        container_id="x", container_name="", reading=reading, time_ns=0
    )
    assert payload["memory_percent"] == 0.0


@pytest.mark.parametrize(
    ("value", "rounded"),
    [
        (0.05, 0.1),  # half-up
        (0.25, 0.3),  # half-up, not banker's rounding (round(0.25, 1) == 0.2)
        (12.34, 12.3),
        (12.35, 12.4),  # 12.35 * 10 + 0.5 = 124.0 in binary: Go gives 12.4 too
        (99.99, 100.0),
        (150.04, 150.0),
        (0.0, 0.0),
        (0.04999, 0.0),
    ],
)
def test_round_half_up_to_one_decimal(value: float, rounded: float) -> None:
    assert round1(value) == rounded


def test_cpu_zero_when_a_delta_is_not_positive() -> None:
    now = CpuReading(total=200, system=1000, online_cpus=2)
    assert cpu_percent(now, CpuReading(total=200, system=900, online_cpus=2)) == 0.0  # idle
    assert cpu_percent(now, CpuReading(total=100, system=1000, online_cpus=2)) == 0.0  # Δsys 0
    assert cpu_percent(now, CpuReading(total=300, system=900, online_cpus=2)) == 0.0  # reset
    assert cpu_percent(now, None) == 0.0
    assert cpu_percent(now, CpuReading(total=100, system=500, online_cpus=2)) == 40.0


def test_first_sample_of_a_stream_has_no_previous_reading() -> None:
    sample = copy.deepcopy(V1_SAMPLE)
    sample["precpu_stats"] = {"cpu_usage": {"total_usage": 0}, "throttling_data": {}}
    reading = container_reading(sample)
    assert reading is not None and reading.precpu is None
    payload = container_stats_payload(
        container_id="x", container_name="", reading=reading, time_ns=0
    )
    assert payload["cpu_percent"] == 0.0


def test_online_cpus_fallbacks() -> None:
    assert online_cpus({"online_cpus": 8, "cpu_usage": {"percpu_usage": [1, 2]}}) == 8
    assert online_cpus({"online_cpus": 0, "cpu_usage": {"percpu_usage": [1, 2, 3]}}) == 3
    assert online_cpus({"cpu_usage": {"percpu_usage": None}}) == 1
    assert online_cpus({}) == 1
    sample = copy.deepcopy(V1_SAMPLE)
    del sample["cpu_stats"]["online_cpus"]
    assert cpu_percent_of_sample(sample) == pytest.approx(100.4498218)  # 2 per-CPU entries


def test_network_and_blkio_sums() -> None:
    assert network_totals(V2_SAMPLE["networks"]) == (1_048_576, 524_288)
    assert network_totals(None) == (0, 0)
    assert blkio_totals(V2_SAMPLE["blkio_stats"]) == (8192, 8192)
    assert blkio_totals({"io_service_bytes_recursive": None}) == (0, 0)  # stopped container
    assert blkio_totals(V1_SAMPLE["blkio_stats"]) == (0, 0)


def test_a_stopped_containers_sample_is_not_a_reading() -> None:
    stopped = {"read": "0001-01-01T00:00:00Z", "memory_stats": {}, "cpu_stats": {}}
    assert container_reading(stopped) is None
    assert container_reading({}) is None


# --- host stats (§5.3) ------------------------------------------------------------------------

PROC_STAT_1 = "cpu  100 10 50 1000 40 5 5 0 0 0\ncpu0 50 5 25 500 20 2 2 0 0 0\nintr 1 2 3\n"
PROC_STAT_2 = "cpu  160 10 70 1100 60 5 5 0 0 0\ncpu0 80 5 35 550 30 2 2 0 0 0\n"
MEMINFO = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:   12000000 kB\n"


def write_tree(root: Path, stat: str, ifaces: dict[str, tuple[str, int, int]]) -> HostRoots:
    proc, sys_root = root / "proc", root / "sys"
    proc.mkdir(parents=True, exist_ok=True)
    (proc / "stat").write_text(stat)
    (proc / "meminfo").write_text(MEMINFO)
    for name, (state, rx, tx) in ifaces.items():
        d = sys_root / "class" / "net" / name
        (d / "statistics").mkdir(parents=True, exist_ok=True)
        (d / "operstate").write_text(state + "\n")
        (d / "statistics" / "rx_bytes").write_text(f"{rx}\n")
        (d / "statistics" / "tx_bytes").write_text(f"{tx}\n")
    return HostRoots(proc=str(proc), sys=str(sys_root))


def test_host_cpu_and_memory_formulas() -> None:
    first, second = parse_proc_stat(PROC_STAT_1), parse_proc_stat(PROC_STAT_2)
    assert first is not None and second is not None
    assert (first.total, first.idle) == (1210, 1040)
    # Δtotal = 1410 - 1210 = 200; Δ(idle+iowait) = 1160 - 1040 = 120; busy = 80 -> 40 %
    assert host_cpu_percent(second, first) == 40.0
    assert host_cpu_percent(second, None) == 0.0
    assert host_cpu_percent(first, first) == 0.0
    assert parse_meminfo(MEMINFO) == 25.0
    assert parse_meminfo("MemFree: 5 kB\n") is None
    assert parse_proc_stat("intr 1\n") is None


def test_interface_filter() -> None:
    for name in ("lo", "veth1a2b", "br-123", "docker0", "virbr0", "vnet3", "tun0", "tap1",
                 "dummy0", "gre0", "sit0", "ip6tnl0", "vxlan.calico", "flannel.1", "cni0",
                 "cali123", "weave"):  # fmt: skip
        assert is_virtual_interface(name), name
    for name in ("eth0", "ens3", "enp0s31f6", "wlan0", "bond0", "eth0.100"):
        assert not is_virtual_interface(name), name


def test_net_rate_skips_counters_that_went_backwards() -> None:
    before = {"eth0": (1000, 1000), "eth1": (5000, 5000)}
    after = {"eth0": (3000, 2000), "eth1": (10, 6000), "eth2": (99, 99)}  # eth1 wrapped
    assert net_bytes_per_sec(after, before, 2.0) == 1500.0  # (2000 + 1000) / 2
    assert net_bytes_per_sec(after, None, 2.0) == 0.0
    assert net_bytes_per_sec(after, before, 0.0) == 0.0


def test_host_sampler_on_fixture_files(tmp_path: Path) -> None:
    roots = write_tree(
        tmp_path,
        PROC_STAT_1,
        {
            "eth0": ("up", 1000, 2000),
            "wlan0": ("unknown", 0, 0),
            "eth1": ("down", 0, 0),  # not counted
            "lo": ("unknown", 10**9, 10**9),  # never counted
            "veth123": ("up", 0, 0),
        },
    )
    sampler = HostStatsSampler(roots)
    first = sampler.sample(now=100.0)
    assert first == {"cpu_percent": 0.0, "mem_percent": 25.0, "net_bytes_per_sec": 0.0}
    write_tree(
        tmp_path,
        PROC_STAT_2,
        {
            "eth0": ("up", 5000, 4000),
            "wlan0": ("unknown", 100, 100),
            "eth1": ("down", 10**6, 10**6),
            "lo": ("unknown", 2 * 10**9, 2 * 10**9),
            "veth123": ("up", 10**6, 10**6),
        },
    )
    second = sampler.sample(now=102.0)
    assert second == {"cpu_percent": 40.0, "mem_percent": 25.0, "net_bytes_per_sec": 3100.0}
    sampler.reset()  # a new connection: baseline again
    assert sampler.sample(now=104.0) == {
        "cpu_percent": 0.0,
        "mem_percent": 25.0,
        "net_bytes_per_sec": 0.0,
    }


def test_host_sampler_sends_nothing_without_proc(tmp_path: Path) -> None:
    assert (
        HostStatsSampler(HostRoots(proc=str(tmp_path / "none"), sys=str(tmp_path))).sample(now=1.0)
        is None
    )


def test_host_roots_native_container_and_mounted(tmp_path: Path) -> None:
    prefix = tmp_path / "host"
    assert host_roots(None, str(prefix)) == HostRoots(proc="/proc", sys="/sys")  # native
    assert host_roots("0123456789ab", str(prefix)) is None  # container without /host/proc
    (prefix / "proc").mkdir(parents=True)
    (prefix / "proc" / "stat").write_text(PROC_STAT_1)
    assert host_roots("0123456789ab", str(prefix)) == HostRoots(
        proc=str(prefix / "proc"), sys="/sys"
    )
    (prefix / "sys" / "class" / "net").mkdir(parents=True)
    assert host_roots("0123456789ab", str(prefix)) == HostRoots(
        proc=str(prefix / "proc"), sys=str(prefix / "sys")
    )
