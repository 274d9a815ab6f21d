"""``host_ips``/``host_ip`` as PROTOCOL §2.2 says, and DOCKER_API_VERSION in every client (§10).

Recorded ``fib_trie`` fixtures (tests/fixtures, captured from real kernels: a network namespace
set up like a Docker host, and this machine), interfaces made for real in a throw-away network
namespace, the strict hub's validation, and the real agent registering against the private
daemon through a socket proxy that records every request path it sends.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.host.host_ips import (
    container_host_ips,
    native_host_ips,
    parse_fib_trie,
    skipped_interface,
)
from messages.common import Secret
from messages.docker import HostInfo
from messages.wire import encode_register
from tests.support.agent_harness import running_agent
from tests.support.daemon import PrivateDockerd
from tests.support.hub import clean_host_ips, validate_registration
from tests.support.prerequisites import requires
from tests.support.waiting import wait_for
from tests.test_shell import open_shell
from tests.test_startup_race import IDENT

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parent.parent


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# --------------------------------------------------------------------------------------------
# container mode: /host/proc/1/net/fib_trie


def test_fib_trie_local_host_entries_in_order_once_each() -> None:
    assert parse_fib_trie(fixture("fib_trie_docker_host.txt")) == [
        "10.20.0.5",
        "100.64.1.2",
        "127.0.0.1",
        "169.254.10.10",
        "172.17.0.1",
        "172.18.0.1",
        "192.168.10.21",
        "192.168.10.22",
    ]
    assert parse_fib_trie(fixture("fib_trie_single_nic.txt")) == ["127.0.0.1", "192.0.2.2"]
    assert parse_fib_trie("") == []


def test_container_mode_drops_loopback_link_local_and_docker_subnets() -> None:
    ips = container_host_ips(
        fixture("fib_trie_docker_host.txt"), ["172.17.0.0/16", "172.18.0.0/16", "fd00::/64"]
    )
    assert ips == ["10.20.0.5", "100.64.1.2", "192.168.10.21", "192.168.10.22"]
    assert container_host_ips(None, []) == []  # host /proc not mounted: none at all


def test_at_most_fifty_addresses() -> None:
    many = "".join(f"|-- 10.0.{i // 250}.{i % 250 + 1}\n   /32 host LOCAL\n" for i in range(60))
    assert len(container_host_ips(many)) == 50


# --------------------------------------------------------------------------------------------
# native mode: the interfaces


def test_native_mode_filters_interfaces_and_addresses() -> None:
    interfaces = [
        ("lo", True, "127.0.0.1"),
        ("eth0", True, "192.168.1.5"),
        ("eth0:1", True, "192.168.1.6"),
        ("eth0", True, "169.254.1.1"),
        ("eth1", False, "10.0.0.1"),  # down
        ("wlan0", True, "10.1.0.9"),
        *(
            (name, True, f"172.30.0.{i}")
            for i, name in enumerate(
                [
                    "docker0", "docker_gwbridge", "cni0", "veth1a2b", "br-0123", "virbr0",
                    "flannel.1", "cali12", "cni-podman0", "weave", "podman1", "vxlan.calico",
                    "tunl0",
                ],
                start=1,
            )
        ),
    ]  # fmt: skip
    assert native_host_ips(lambda: interfaces) == ["192.168.1.5", "192.168.1.6", "10.1.0.9"]
    assert skipped_interface("br-x:1") and not skipped_interface("bridge0")


@requires(shutil.which("unshare") is not None, "needs util-linux unshare")
def test_native_mode_on_real_interfaces_in_a_network_namespace() -> None:
    script = """
set -e
ip link set lo up
ip link add eth7 type veth peer name peer7; ip link set peer7 up
ip addr add 10.9.8.7/24 dev eth7; ip addr add 10.9.9.9/24 dev eth7 label eth7:1
ip addr add 169.254.3.3/16 dev eth7; ip link set eth7 up
ip link add eth8 type veth peer name peer8; ip addr add 10.1.1.1/24 dev eth8
ip link add docker0 type bridge; ip addr add 172.17.0.1/16 dev docker0; ip link set docker0 up
ip link add br-abc type bridge; ip addr add 172.18.0.1/16 dev br-abc; ip link set br-abc up
ip link add veth9 type veth peer name peer9; ip addr add 10.2.2.2/24 dev veth9
ip link set veth9 up
exec "$0" -c 'import json, actors.host.host_ips as h; print(json.dumps(h.native_host_ips()))'
"""
    result = subprocess.run(
        ["unshare", "--net", "sh", "-c", script, sys.executable],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["10.9.8.7", "10.9.9.9"]


# --------------------------------------------------------------------------------------------
# the register frame and the strict hub


def _frame(ips: tuple[str, ...], *, facts: bool = True) -> dict[str, Any]:
    host = HostInfo(
        engine_id="ENGINE:ID",
        docker_version="20.10" if facts else None,
        host_ips=ips,
    )
    return dict(json.loads(encode_register(Secret("tok-1"), host, IDENT)))


def test_register_sends_host_ips_and_host_ip_only_with_the_system_facts() -> None:
    frame = _frame(("192.168.10.21", "10.0.0.5"))
    assert frame["host_ips"] == ["192.168.10.21", "10.0.0.5"]
    assert frame["host_ip"] == "192.168.10.21"
    assert validate_registration(frame) is None
    assert "host_ips" not in _frame(()) and "host_ip" not in _frame(())
    assert "host_ips" not in _frame(("10.0.0.5",), facts=False)  # all or nothing


def test_the_hub_validates_host_ips_as_the_backend_does() -> None:
    frame = _frame(("10.0.0.5",))
    assert clean_host_ips(["10.0.0.5", "not-an-ip", "fe80::1", " 10.0.0.6 "]) == (
        "10.0.0.5",
        "fe80::1",
        "10.0.0.6",
    )
    too_many = {**frame, "host_ips": [f"10.0.0.{i}" for i in range(51)]}
    assert "at most 50 items" in str(validate_registration(too_many))
    long_ip = {**frame, "host_ip": "1" * 46}
    assert "(field: host_ip)" in str(validate_registration(long_ip))
    assert "(field: host_ips.0)" in str(validate_registration({**frame, "host_ips": [1]}))


TEST_NETWORKS = ipaddress.ip_network("198.18.0.0/15")


def stable(ips: list[str]) -> list[str]:
    """Without addresses in 198.18.0.0/15, where other test sessions' networks live."""
    return [ip for ip in ips if ipaddress.ip_address(ip) not in TEST_NETWORKS]


def _up_addresses() -> list[str]:
    """This machine's IPv4 addresses per ``ip`` (independent of the agent's ioctl)."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "up"], capture_output=True, text=True, check=True
    ).stdout
    ips = []
    for line in out.splitlines():
        fields = line.split()
        name, address = fields[1], fields[3].split("/")[0]
        if skipped_interface(name) or address.startswith(("127.", "169.254.")):
            continue
        ips.append(address)
    return ips


@requires(shutil.which("ip") is not None, "needs iproute2")
def test_native_agent_registers_with_this_hosts_addresses(
    tmp_path: Path, dockerd: PrivateDockerd
) -> None:
    with running_agent(tmp_path / "data", dockerd.base_url) as agent:
        record = agent.hub.wait_registered()
        frame = agent.hub.registrations[0]
        expected = stable(_up_addresses())
        got = frame.get("host_ips", [])
        assert stable(got) == expected  # other sessions' test networks come and go meanwhile
        if got:
            assert frame["host_ip"] == got[0]
            assert record.host_ips == tuple(got)
        agent.hub.assert_clean()


# --------------------------------------------------------------------------------------------
# DOCKER_API_VERSION: every Docker client the agent builds speaks it


class RecordingProxy:
    """A unix socket in front of dockerd that records each HTTP request line it forwards."""

    REQUEST = re.compile(rb"(GET|POST|PUT|DELETE|HEAD) (\S+) HTTP/1\.[01]\r\n")

    def __init__(self, path: str, upstream: str) -> None:
        self.path, self.upstream = path, upstream
        self._lock = threading.Lock()
        self._requests: list[tuple[str, str]] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(path)
        self._server.listen(64)
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def requests(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._requests)

    def paths(self) -> list[str]:
        return [path for _, path in self.requests]

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.upstream)
            for args in ((client, upstream, True), (upstream, client, False)):
                t = threading.Thread(target=self._pump, args=args, daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        pending = b""
        try:
            while data := source.recv(65536):
                if record:
                    pending = (pending + data)[-8192:]
                    for match in self.REQUEST.finditer(pending):
                        with self._lock:
                            self._requests.append((match[1].decode(), match[2].decode()))
                    last = list(self.REQUEST.finditer(pending))
                    if last:
                        pending = pending[last[-1].end() :]
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._server.close()


@pytest.fixture
def proxy(tmp_path: Path, dockerd: PrivateDockerd) -> Iterator[RecordingProxy]:
    p = RecordingProxy(str(tmp_path / "proxy.sock"), dockerd.socket_path)
    yield p
    p.close()


def test_every_docker_client_speaks_docker_api_version(
    tmp_path: Path, proxy: RecordingProxy, make_container: Any
) -> None:
    version = "1.40"  # the private dockerd speaks 1.12 .. 1.41
    with running_agent(
        tmp_path / "data", f"unix://{proxy.path}", DOCKER_API_VERSION=version
    ) as agent:
        hub = agent.hub
        hub.wait_registered()  # DockerGateway: info, version, networks
        assert hub.command("list_containers").ok  # DockerGateway
        c = make_container(["sleep", "3600"])
        hub.wait_event(  # EventStreamer
            lambda e: e["payload"]["container_id"] == c.id and e["payload"]["action"] == "start"
        )
        wait_for(  # Stats: the listing and the container's stats stream
            lambda: any(f"/containers/{c.id}/stats" in p for p in proxy.paths()),
            30,
            "a stats stream",
        )
        open_shell(hub, c.id[:12])  # Shell
        # Updater: it resolves the container, then pulls (only it pulls) from a loopback port
        # where nothing listens, so the daemon's attempt goes nowhere
        reply = hub.command(
            "update_container",
            {"container_id": c.id[:12], "new_image": "127.0.0.1:9/none:latest"},
        )
        assert reply.ok
        wait_for(lambda: any("/images/create" in p for p in proxy.paths()), 30, "the pull")
        hub.wait_event(lambda e: e["payload"].get("stage") == "failed", timeout=30)
        hub.assert_clean()
    paths = proxy.paths()
    assert any(p.startswith(f"/v{version}/events") for p in paths)
    assert any(p.startswith(f"/v{version}/exec/") for p in paths)
    assert any(p.startswith(f"/v{version}/containers/json") for p in paths)
    unversioned = [p for p in paths if not p.startswith(f"/v{version}/")]
    assert unversioned == [], unversioned


def test_a_bad_docker_api_version_is_a_configuration_error() -> None:
    import agent_config

    report = agent_config.inspect_config(
        {"DOCKMON_URL": "https://d.example.com", "DOCKER_API_VERSION": "1.2.3"}
    )
    assert report.problems_of("DOCKER_API_VERSION")
    report = agent_config.inspect_config(
        {"DOCKMON_URL": "https://d.example.com", "DOCKER_API_VERSION": "1.19"}
    )
    assert "older than 1.24" in report.problems_of("DOCKER_API_VERSION")[0]
    cfg = agent_config.load_config(
        {"DOCKMON_URL": "https://d.example.com", "DOCKER_API_VERSION": "1.41"}
    )
    assert cfg.docker_api_version == "1.41"
