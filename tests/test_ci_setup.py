"""README's two commands on a stock Debian 12 with only the distribution's python3 (issue 9, 4).

A throw-away Debian bookworm root (the cached debootstrap tarball the Python base image is made
from: minbase + python3 + python3-venv, with Debian's EXTERNALLY-MANAGED marker) gets a copy of
this checkout; each command runs there under ``chroot`` in a private mount namespace (its /proc,
/dev and cache mounts vanish with it). The agent command runs up to ``--version`` and a start
without settings; the test command (``.ci/run``) runs its setup stage (``--setup-only``) while
another "apt" holds the package locks, then the tools it installed in ``.venv`` must work.
Packages come from deb.debian.org and PyPI; apt archives and pip's cache are kept in the test
cache directory between runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.hostenv import CACHE_DIR, remove_tree
from tests.support.images import python_rootfs_tarball
from tests.support.prerequisites import require

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
_IGNORED = (".git", ".venv", "venv", "wheels", "build", "dist", "__pycache__", "*.egg-info",
            ".pytest_cache", ".mypy_cache", ".ruff_cache", ".benchmarks")  # fmt: skip
APT_LOCKS = (
    "var/lib/apt/lists/lock",
    "var/lib/dpkg/lock-frontend",
    "var/lib/dpkg/lock",
    "var/cache/apt/archives/lock",
)


def readme_command(title: str) -> str:
    """The ``sh`` block that follows ``**<title>**`` in README's "The two commands"."""
    match = re.search(rf"\*\*{re.escape(title)}\*\*.*?```sh\n(.*?)\n```", README, re.S)
    assert match, f"README has no command after **{title}**"
    return match.group(1).strip()


@pytest.fixture(scope="module")
def stock_debian() -> Iterator[Path]:
    require(os.geteuid() == 0, "chroot needs root")
    for tool in ("debootstrap", "unshare", "chroot", "mount"):
        require(shutil.which(tool) is not None, f"{tool} is not installed")
    tarball = python_rootfs_tarball()
    root = Path(tempfile.mkdtemp(prefix="dm-debian-", dir="/tmp"))
    try:
        subprocess.run(["tar", "--numeric-owner", "-xf", str(tarball), "-C", str(root)], check=True)
        # The host's network setup comes along: its resolver, and the CAs it added locally
        # (an egress proxy's, on a machine that has one), as on any machine behind that proxy.
        shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
        local_cas = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
        for ca in local_cas:
            shutil.copy(ca, root / "usr/local/share/ca-certificates" / ca.name)
        if local_cas:
            run_in_chroot(root, "update-ca-certificates >/dev/null")
        for name in ("run", "ci"):  # one checkout per command: neither sees the other's .venv
            shutil.copytree(
                REPO, root / "src" / name, ignore=shutil.ignore_patterns(*_IGNORED), symlinks=True
            )
        yield root
    finally:
        remove_tree(root)


def in_chroot(
    root: Path, script: str, *, cwd: str = "/", timeout: float = 600
) -> subprocess.Popen[str]:
    """Start ``script`` (sh) as root in ``root``; stdout and stderr merged, text."""
    caches = {
        CACHE_DIR / "ci-apt-archives": root / "var/cache/apt/archives",
        CACHE_DIR / "ci-pip-cache": root / "root/.cache/pip",
    }
    mounts = [f"mount -t proc proc {root}/proc", f"mount --bind /dev {root}/dev"]
    for source, target in caches.items():
        (source / "partial").mkdir(parents=True, exist_ok=True)
        target.mkdir(parents=True, exist_ok=True)
        mounts.append(f"mount --bind {source} {target}")
    inner = f"cd {shlex.quote(cwd)} && {script}"
    outer = " && ".join([*mounts, f"exec chroot {root} /bin/sh -c {shlex.quote(inner)}"])
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        # pip trusts its own bundled CAs unless told to use the system's (which has the above)
        "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
        **{k: v for k, v in os.environ.items() if k.lower().endswith("_proxy")},
    }
    return subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", outer],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_in_chroot(root: Path, script: str, *, cwd: str = "/", timeout: float = 600) -> str:
    proc = in_chroot(root, script, cwd=cwd)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{script!r} failed ({proc.returncode}):\n{out[-6000:]}"
    return out


def test_the_root_is_a_stock_debian_with_only_the_distributions_python(
    stock_debian: Path,
) -> None:
    assert (stock_debian / "usr/lib/python3.11/EXTERNALLY-MANAGED").exists()
    out = run_in_chroot(stock_debian, "python3 -m pip --version || echo no-pip")
    assert "no-pip" in out  # so nothing can be installed into it without a venv


def test_readme_run_command(stock_debian: Path) -> None:
    command = readme_command("Run the agent")
    steps = [step.strip() for step in command.split(" && ")]
    assert steps[:3] == [
        "sudo apt-get install -y python3-venv",
        "python3 -m venv .venv",
        ".venv/bin/pip install -q .",
    ], steps
    assert steps[3].endswith(" .venv/bin/dockmon-agent") and "DOCKMON_URL=" in steps[3]
    # Everything up to starting the agent, as written (root in the chroot: no sudo there) ...
    setup = " && ".join(step.removeprefix("sudo ") for step in steps[:3])
    run_in_chroot(stock_debian, setup, cwd="/src/run")
    # ... then the agent itself: its version, and a start without settings (never the example
    # DockMon URL: nothing outside this machine is contacted).
    out = run_in_chroot(stock_debian, ".venv/bin/dockmon-agent --version", cwd="/src/run")
    assert out.strip() == "dockmon-agent 0.1.0"
    proc = in_chroot(
        stock_debian, "env -i DATA_PATH=/tmp/agent-data .venv/bin/dockmon-agent", cwd="/src/run"
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    assert "DOCKMON_URL is not set" in out and "no token: set REGISTRATION_TOKEN" in out


@contextlib.contextmanager
def apt_busy(root: Path) -> Iterator[threading.Event]:
    """Hold apt's and dpkg's locks in ``root`` (as a running apt would) until told to stop."""
    release = threading.Event()
    fds = []
    for lock in APT_LOCKS:
        path = root / lock
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fds.append(fd)
    try:
        yield release
    finally:
        for fd in fds:
            os.close(fd)  # closing drops the lock


def test_readme_test_command_waits_for_apt_and_sets_up_a_venv(stock_debian: Path) -> None:
    command = readme_command("Run the tests")
    assert command == "sudo bash .ci/run"
    setup = f"{command.removeprefix('sudo ')} --setup-only"
    with apt_busy(stock_debian):
        proc = in_chroot(stock_debian, setup, cwd="/src/ci")
        assert proc.stdout is not None
        seen: list[str] = []
        for line in proc.stdout:  # the script says when it waits for the lock
            seen.append(line)
            if "apt is busy" in line:
                break
        else:
            proc.wait(timeout=60)
            raise AssertionError("".join(seen)[-4000:])
    out, _ = proc.communicate(timeout=600)  # the locks are free now: it goes on
    out = "".join(seen) + out
    assert proc.returncode == 0, out[-6000:]
    assert "setup done (--setup-only)" in out and "==== ruff check" not in out

    checks = " && ".join(
        [
            ".venv/bin/python -m pytest --collect-only -q -p no:cacheprovider > /tmp/collected",
            "tail -n 1 /tmp/collected",
            ".venv/bin/ruff --version",
            ".venv/bin/ruff check --select F --quiet agent_cli.py",
            ".venv/bin/mypy --version",
            ".venv/bin/dockmon-agent --version",
            "! python3 -c 'import pytest' 2>/dev/null",  # nothing went into the system python
            # nor the agent's dependencies (agent_cli itself now imports only the standard
            # library at first, for a light healthcheck: it would import from the checkout)
            "! python3 -c 'import pykka' 2>/dev/null",
            "! python3 -c 'import docker' 2>/dev/null",
        ]
    )
    out = run_in_chroot(stock_debian, checks, cwd="/src/ci")
    assert re.search(r"^\d+ tests collected", out, re.M), out
    assert "ruff " in out and "mypy " in out and "dockmon-agent 0.1.0" in out
