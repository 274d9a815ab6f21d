"""The host's IP addresses for ``register`` (``host_ips``/``host_ip``, PROTOCOL §2.2).

* Container mode (the agent runs in a container): the ``/32 host LOCAL`` entries of the host's
  ``/host/proc/1/net/fib_trie`` when host ``/proc`` is mounted there (else none), without
  ``127.*`` and ``169.254.*``, minus every address inside a Docker network's subnet.
* Native mode: the IPv4 addresses of the interfaces that are up, without loopback and
  link-local addresses, skipping Docker's, CNI's and other virtual interfaces by name.

At most 50 addresses (the backend rejects more); none means both keys are omitted.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import ipaddress
import socket
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

#: the backend refuses a longer list
MAX_HOST_IPS = 50

_SKIPPED_NAMES = frozenset({"docker0", "docker_gwbridge", "cni0"})
_SKIPPED_PREFIXES = (
    "veth", "br-", "virbr", "flannel", "cali", "cni-", "weave", "podman", "vxlan", "tunl",
)  # fmt: skip

_SIOCGIFCONF = 0x8912
_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1
_IFNAMSIZ = 16
#: struct ifreq: the name, then a union whose largest member (struct ifmap) has longs in it
_IFREQ_SIZE = _IFNAMSIZ + (24 if struct.calcsize("P") == 8 else 16)

#: (interface name, is up, IPv4 address) for every IPv4 address of the host
Interfaces = Callable[[], list[tuple[str, bool, str]]]


def _usable(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.version == 4 and not ip.is_loopback and not ip.is_link_local


def parse_fib_trie(text: str) -> list[str]:
    """The ``/32 host LOCAL`` addresses of a ``/proc/net/fib_trie``, in order, once each."""
    found: list[str] = []
    leaf: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|-- "):
            leaf = stripped[4:].strip()
        elif stripped.startswith("+-- ") or stripped.endswith(":"):
            leaf = None  # a new subtree or table: the previous leaf is over
        elif (
            leaf is not None and stripped.split() == ["/32", "host", "LOCAL"] and leaf not in found
        ):
            found.append(leaf)
    return found


def container_host_ips(fib_trie: str | None, docker_subnets: Iterable[str] = ()) -> list[str]:
    """Container mode, from the host's fib_trie text (None: host /proc is not mounted)."""
    if fib_trie is None:
        return []
    networks = []
    for subnet in docker_subnets:
        with contextlib.suppress(ValueError):
            networks.append(ipaddress.ip_network(subnet, strict=False))
    ips = []
    for address in parse_fib_trie(fib_trie):
        if not _usable(address):
            continue
        ip = ipaddress.ip_address(address)
        if any(ip.version == net.version and ip in net for net in networks):
            continue
        ips.append(address)
    return ips[:MAX_HOST_IPS]


def skipped_interface(name: str) -> bool:
    base = name.split(":", 1)[0]  # an address label such as eth0:1 belongs to eth0
    return base in _SKIPPED_NAMES or base.startswith(_SKIPPED_PREFIXES)


def system_interfaces() -> list[tuple[str, bool, str]]:
    """Every IPv4 address of this network namespace with its interface (SIOCGIFCONF)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        count = 32
        while True:
            buffer = array.array("B", bytes(count * _IFREQ_SIZE))
            request = struct.pack("iP", len(buffer), buffer.buffer_info()[0])
            length = struct.unpack("iP", fcntl.ioctl(sock.fileno(), _SIOCGIFCONF, request))[0]
            if length < len(buffer):  # it all fitted
                break
            count *= 2
        raw = buffer.tobytes()[:length]
        result = []
        for offset in range(0, length, _IFREQ_SIZE):
            name = raw[offset : offset + _IFNAMSIZ].split(b"\0", 1)[0]
            address = socket.inet_ntoa(raw[offset + _IFNAMSIZ + 4 : offset + _IFNAMSIZ + 8])
            flags_request = struct.pack(f"{_IFNAMSIZ}sH", name, 0).ljust(_IFREQ_SIZE, b"\0")
            try:
                answer = fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, flags_request)
            except OSError:
                continue  # gone meanwhile
            flags = struct.unpack(f"{_IFNAMSIZ}sH", answer[: _IFNAMSIZ + 2])[1]
            result.append((name.decode("utf-8", "replace"), bool(flags & _IFF_UP), address))
        return result


def native_host_ips(interfaces: Interfaces = system_interfaces) -> list[str]:
    """Native mode: IPv4 addresses of the interfaces that are up, without virtual ones."""
    ips = []
    for name, up, address in interfaces():
        if up and not skipped_interface(name) and _usable(address) and address not in ips:
            ips.append(address)
    return ips[:MAX_HOST_IPS]


def read_host_fib_trie(host_proc: str) -> str | None:
    """``<host_proc>/1/net/fib_trie``, or None when host /proc is not mounted there."""
    try:
        return Path(host_proc, "1", "net", "fib_trie").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
