"""The host side every Docker test helper shares (daemon, images, containers, registry).

* :func:`clean_env` is the environment of every daemon the helpers start: no proxy variables and
  no ``DOCKER_*`` (nothing may leave loopback, nothing may reach another daemon).
* :func:`remove_tree` never descends into a mount a crashed daemon or debootstrap left behind.
* :func:`set_pdeathsig` makes a child die with the test process, so a killed pytest leaves no
  daemon running.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("DOCKMON_TEST_CACHE_DIR", "/var/cache/dockmon-agent-tests"))

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_PROXY_VARS = {"http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy"}
_MNT_DETACH = 2


class DockerEnvError(RuntimeError):
    """A test-infrastructure step (daemon, image build, registry) failed; message has the logs."""


def tail(path: str | os.PathLike[str], lines: int = 60) -> str:
    """Last ``lines`` lines of a text file ('' if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for daemons we start: no proxies (nothing may leave loopback)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in _PROXY_VARS and not k.startswith("DOCKER_")
    }
    path = env.get("PATH", "")
    env["PATH"] = f"{path}:{SYSTEM_PATH}" if path else SYSTEM_PATH
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mounts_under(root: Path) -> list[str]:
    """Mount points strictly below ``root`` in our mount namespace, deepest first."""
    prefix = str(root).rstrip("/") + "/"
    found: list[str] = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 5:
                    continue
                # mountinfo escapes space, tab, newline and backslash as octal
                point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
                if point.startswith(prefix):
                    found.append(point)
    except OSError:
        return []
    return sorted(set(found), key=len, reverse=True)


def unmount_under(root: Path) -> None:
    """Lazily unmount whatever a crashed daemon/debootstrap left mounted below ``root``."""
    libc = ctypes.CDLL(None, use_errno=True)
    for point in _mounts_under(root):
        libc.umount2(point.encode(), _MNT_DETACH)


def remove_tree(root: Path) -> None:
    """``rm -rf root`` without ever descending into something still mounted there."""
    if not root.exists():
        return
    unmount_under(root)
    if _mounts_under(root):
        raise DockerEnvError(f"refusing to delete {root}: still mounted: {_mounts_under(root)}")
    shutil.rmtree(root, ignore_errors=True)


def set_pdeathsig() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def host_network_env() -> dict[str, str]:
    """Host-side downloads (debootstrap, pip) keep the host's proxy settings."""
    env = dict(os.environ)
    env["PATH"] = f"{env.get('PATH', '')}:{SYSTEM_PATH}"
    return env
