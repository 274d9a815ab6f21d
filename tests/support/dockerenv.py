"""Reusable helpers for tests that need a real Docker daemon. No pytest dependency.

Safety contract (every helper here keeps it):

* :class:`PrivateDockerd` runs its own ``dockerd`` with its own socket, data-root, exec-root,
  pidfile and config file under a short temporary directory, with no bridge, iptables, masquerading
  or ip6tables. It never talks to ``/var/run/docker.sock`` or any other daemon and it only ever
  signals the processes it started (dockerd by pid; containerd, shims and container processes that
  are provably its own because their command line or root directory lies inside its tmp tree).
* Nothing is pulled: images are imported from local tarballs (:func:`make_busybox_image`,
  :func:`build_python_base_image`) or built with ``network_mode="none"``
  (:func:`build_agent_image`).
* :class:`LocalRegistry` listens on 127.0.0.1 only.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import fcntl
import fnmatch
import hashlib
import http.client
import io
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import docker
import docker.errors
import docker.models.containers
import requests
from docker.models.containers import Container

DEFAULT_BUSYBOX_TAG = "dockmon-test/busybox:latest"
DEFAULT_PYTHON_BASE_TAG = "dockmon-test/python-base:bookworm"
DEFAULT_AGENT_TAG = "dockmon-test/agent:dev"
TEST_LABEL = "dockmon-test"
"""Every container the test helpers create carries ``dockmon-test=1``."""

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("DOCKMON_TEST_CACHE_DIR", "/var/cache/dockmon-agent-tests"))
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"

# Applets the tests rely on; make_busybox_image fails loudly if busybox lacks one.
REQUIRED_APPLETS: tuple[str, ...] = (
    "sh", "sleep", "echo", "cat", "ls", "true", "false", "kill", "wget", "nc", "ps", "date",
    "env", "printf", "yes", "head",
)  # fmt: skip
# Linked too when this busybox has them (handy, not required).
OPTIONAL_APPLETS: tuple[str, ...] = (
    "ash", "tail", "grep", "sed", "awk", "mkdir", "rm", "cp", "mv", "touch", "id", "hostname",
    "uname", "wc", "test", "[", "seq", "tee", "timeout", "pidof", "killall", "xargs", "tr",
    "sort", "uniq", "cut", "chmod", "ln", "pwd", "mkfifo", "stat", "dd", "httpd", "sha256sum",
    "base64", "whoami", "top", "nproc", "realpath", "dirname", "basename", "tar", "gzip",
)  # fmt: skip

_PROXY_VARS = {"http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy"}
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MNT_DETACH = 2


class DockerEnvError(RuntimeError):
    """A test-infrastructure step (daemon, image build, registry) failed; message has the logs."""


class ContainerFactory(Protocol):
    """Type of the ``make_container`` fixture (see tests/conftest.py)."""

    def __call__(
        self,
        command: str | list[str] | None = "sleep 3600",
        name: str | None = None,
        start: bool = True,
        **create_kwargs: Any,
    ) -> Container: ...


# --------------------------------------------------------------------------------------------
# small utilities


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


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment for daemons we start: no proxies (nothing may leave loopback)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in _PROXY_VARS and not k.startswith("DOCKER_")
    }
    path = env.get("PATH", "")
    env["PATH"] = f"{path}:{_SYSTEM_PATH}" if path else _SYSTEM_PATH
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


def _unmount_under(root: Path) -> None:
    """Lazily unmount whatever a crashed daemon/debootstrap left mounted below ``root``."""
    libc = ctypes.CDLL(None, use_errno=True)
    for point in _mounts_under(root):
        libc.umount2(point.encode(), _MNT_DETACH)


def remove_tree(root: Path) -> None:
    """``rm -rf root`` without ever descending into something still mounted there."""
    if not root.exists():
        return
    _unmount_under(root)
    if _mounts_under(root):
        raise DockerEnvError(f"refusing to delete {root}: still mounted: {_mounts_under(root)}")
    shutil.rmtree(root, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still answers kill(0); treat it as gone
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_pids_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait (bounded, short polls) for external processes to exit; return those still alive."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if _pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _pid_alive(p)]
    return alive


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _ping(socket_path: str, timeout: float = 2.0) -> bool:
    conn = _UnixHTTPConnection(socket_path, timeout)
    try:
        conn.request("GET", "/_ping")
        resp = conn.getresponse()
        return resp.status == 200 and resp.read().strip() == b"OK"
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _root_mount_source(pid: int) -> str:
    """The mountinfo line of ``pid``'s ``/`` mount ('' if unreadable): for a container process
    it names the overlay's lowerdir/upperdir, i.e. which data-root it came from."""
    try:
        with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split(" ", 5)
                if len(fields) > 4 and fields[4] == "/":
                    return line
    except OSError:
        pass
    return ""


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# --------------------------------------------------------------------------------------------
# the private daemon


_LIVE_DAEMONS: weakref.WeakSet[PrivateDockerd] = weakref.WeakSet()


@atexit.register
def _stop_live_daemons() -> None:
    for d in list(_LIVE_DAEMONS):
        with contextlib.suppress(Exception):
            d.close()


class PrivateDockerd:
    """A throw-away ``dockerd`` that only this test session talks to.

    Use as a context manager or call :meth:`start` / :meth:`close`. :meth:`stop` keeps the
    data-root so :meth:`start` (or :meth:`restart`) brings the same images and containers back.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        dockerd: str = "dockerd",
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        shutdown_timeout: int = 3,
        extra_args: Sequence[str] = (),
    ) -> None:
        binary = shutil.which(dockerd, path=_clean_env()["PATH"])
        if binary is None:
            raise DockerEnvError(f"{dockerd!r} not found (Debian package docker.io)")
        self._dockerd = binary
        self._owns_root = root is None
        # keep paths short: a unix socket path must fit in 108 bytes
        self.root = Path(tempfile.mkdtemp(prefix="dm", dir="/tmp") if root is None else root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_path = str(self.root / "d.sock")
        self.data_root = self.root / "data"
        self.exec_root = self.root / "x"
        self.pidfile = self.root / "d.pid"
        self.config_file = self.root / "daemon.json"
        self.log_path = self.root / "dockerd.log"
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.shutdown_timeout = shutdown_timeout
        self.extra_args = tuple(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: io.BufferedWriter | None = None
        self._lock = threading.RLock()

    # -- properties ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def __repr__(self) -> str:
        return f"<PrivateDockerd {self.base_url} pid={self.pid} running={self.running}>"

    # -- lifecycle ----------------------------------------------------------------------------

    def command(self) -> list[str]:
        return [
            self._dockerd,
            "--host", self.base_url,
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.pidfile),
            "--config-file", str(self.config_file),
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
            "--ip6tables=false",
            f"--shutdown-timeout={self.shutdown_timeout}",
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> None:
        """Start the daemon (no-op if running) and wait until ``/_ping`` answers."""
        with self._lock:
            if self.running:
                return
            self._reap_leftovers()  # a previous instance killed hard may have left containerd
            self._remove_stale_pidfiles()
            self.config_file.write_text("{}\n")
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            self._log.write(f"\n===== start {time.strftime('%H:%M:%S')}\n".encode())
            self._log.flush()
            in_main = threading.current_thread() is threading.main_thread()
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=_clean_env(),
                start_new_session=True,  # a ^C in the terminal goes to pytest, not to dockerd
                # dies with us if pytest is killed; only from the main thread (pdeathsig is
                # per thread: a worker thread ending would otherwise take the daemon with it)
                preexec_fn=_set_pdeathsig if in_main else None,
            )
            _LIVE_DAEMONS.add(self)
            try:
                self._wait_ready()
            except BaseException:
                self.stop()
                raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            proc = self._proc
            assert proc is not None
            if proc.poll() is not None:
                raise DockerEnvError(
                    f"dockerd exited with {proc.returncode} during startup; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if _ping(self.socket_path):
                return
            if time.monotonic() > deadline:
                raise DockerEnvError(
                    f"dockerd not ready after {self.start_timeout:.0f}s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM the daemon, wait, SIGKILL as a fallback; then kill anything it left behind."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=30)
            self._reap_leftovers()
            if self._log is not None:
                self._log.close()
                self._log = None

    def restart(self) -> None:
        """Stop then start on the same data-root (images survive, running containers stop)."""
        with self._lock:
            self.stop()
            self.start()

    def close(self) -> None:
        """Stop the daemon and delete its tmp tree (if this object created it)."""
        with self._lock:
            self.stop()
            _LIVE_DAEMONS.discard(self)
            if self._owns_root:
                remove_tree(self.root)

    def __enter__(self) -> PrivateDockerd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _leftover_pids(self) -> list[int]:
        """Processes that are provably ours: dockerd/containerd/shims whose command line names
        our tmp tree, and container processes whose root filesystem is an overlay in our
        data-root (a shim killed hard leaves its container's processes running)."""
        root = str(self.root).rstrip("/") + "/"
        data = str(self.data_root).rstrip("/") + "/"
        me = os.getpid()
        pids: list[int] = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            pid = int(entry)
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                names_us = any(a.decode("utf-8", "replace").startswith(root) for a in argv)
                if names_us or data in _root_mount_source(pid):
                    pids.append(pid)
            except OSError:
                continue
        return pids

    def _remove_stale_pidfiles(self) -> None:
        """After a hard kill, containerd may linger as a zombie (PID 1 reaps it when it likes);
        dockerd takes the pid in its pidfile for a live containerd and then times out."""
        for pidfile in (self.pidfile, self.exec_root / "containerd" / "containerd.pid"):
            try:
                pid = int(pidfile.read_text().strip() or 0)
            except (OSError, ValueError):
                continue
            if pid <= 0 or not _pid_alive(pid):
                pidfile.unlink(missing_ok=True)

    def _reap_leftovers(self) -> None:
        # Only ever called with our dockerd gone: nothing is left to shut down gracefully, and
        # a container's PID 1 ignores SIGTERM from outside its namespace anyway.
        pids = self._leftover_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        survivors = _wait_pids_gone(pids, 10.0)
        if survivors:
            raise DockerEnvError(f"processes of {self!r} survived SIGKILL: {survivors}")

    # -- clients ------------------------------------------------------------------------------

    def client(self, timeout: int = 120) -> docker.DockerClient:
        """A new docker-py client for this daemon (caller closes it)."""
        if not self.running:
            raise DockerEnvError(f"{self!r} is not running")
        client = docker.DockerClient(base_url=self.base_url, version="auto", timeout=timeout)
        # ignore the user's ~/.docker/config.json: no credential helpers, no stored logins
        empty = self.root / "client-config.json"
        empty.write_text("{}\n")
        client.api.reload_config(str(empty))
        return client


# --------------------------------------------------------------------------------------------
# images


def _image_with_label(client: docker.DockerClient, tag: str, key: str, value: str) -> str | None:
    """Id of image ``tag`` if it exists and carries label ``key=value``."""
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    labels = image.attrs.get("Config", {}).get("Labels") or {}
    return str(image.id) if labels.get(key) == value else None


def _import_result_id(client: docker.DockerClient, result: Any, tag: str) -> str:
    """docker-py returns the import's JSON progress as text; the tag is the reliable handle."""
    text = result if isinstance(result, str) else json.dumps(result)
    if '"error"' in text or "errorDetail" in text:
        raise DockerEnvError(f"import of {tag} failed: {text[-2000:]}")
    return str(client.images.get(tag).id)


def _is_static_elf(path: Path) -> bool:
    """True if ``path`` is an ELF executable without a PT_INTERP (dynamic loader) header."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF":
            return False
        is64 = head[4] == 2
        order: Literal["little", "big"] = "little" if head[5] == 1 else "big"
        if is64:
            phoff = int.from_bytes(head[0x20:0x28], order)
            phentsize = int.from_bytes(head[0x36:0x38], order)
            phnum = int.from_bytes(head[0x38:0x3A], order)
        else:
            phoff = int.from_bytes(head[0x1C:0x20], order)
            phentsize = int.from_bytes(head[0x2A:0x2C], order)
            phnum = int.from_bytes(head[0x2C:0x2E], order)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            if int.from_bytes(f.read(4), order) == 3:  # PT_INTERP
                return False
    return True


def _find_static_busybox() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        p = Path(candidate)
        if p.is_file() and _is_static_elf(p):
            return p
    raise DockerEnvError("no statically linked busybox found; install Debian's busybox-static")


def make_busybox_image(client: docker.DockerClient, tag: str = DEFAULT_BUSYBOX_TAG) -> str:
    """Import a tiny busybox rootfs as ``tag`` (reused if already imported); return its id."""
    busybox = _find_static_busybox()
    available = set(
        subprocess.run(
            [str(busybox), "--list"], check=True, capture_output=True, text=True
        ).stdout.split()
    )
    missing = [a for a in REQUIRED_APPLETS if a not in available]
    if missing:
        raise DockerEnvError(f"{busybox} lacks applets {missing}")
    applets = sorted({*REQUIRED_APPLETS, *(a for a in OPTIONAL_APPLETS if a in available)})
    blob = busybox.read_bytes()
    key = hashlib.sha256(blob + "\0".join(["v1", *applets]).encode()).hexdigest()[:16]
    label = "dockmon-test.busybox-key"
    existing = _image_with_label(client, tag, label, key)
    if existing:
        return existing

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        for d in ("bin", "etc", "root", "proc", "sys", "dev", "usr", "usr/bin", "var"):
            add_dir(d, 0o700 if d == "root" else 0o755)
        add_dir("tmp", 0o1777)
        add_dir("var/tmp", 0o1777)
        add_file("bin/busybox", blob, 0o755)
        for applet in applets:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(link)
        add_file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )
        add_file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    changes = [
        "ENV PATH=/bin:/usr/bin",
        'CMD ["sh"]',
        f"LABEL {label}={key}",
    ]
    repository, _, tagname = tag.rpartition(":")
    result = client.api.import_image_from_data(
        buf.getvalue(), repository=repository, tag=tagname, changes=changes
    )
    return _import_result_id(client, result, tag)


def host_debian_mirror(suite: str = "bookworm", apt_dir: Path = Path("/etc/apt")) -> str:
    """The host's apt mirror for ``suite`` (deb822 .sources first, then sources.list)."""
    candidates: list[str] = []
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                k, _, v = line.partition(":")
                fields[k.strip().lower()] = v.strip()
            if fields.get("enabled", "yes").lower() == "no":
                continue
            if (
                "deb" in fields.get("types", "").split()
                and suite in fields.get("suites", "").split()
            ):
                candidates.extend(fields.get("uris", "").split())
    list_files = [
        apt_dir / "sources.list",
        *sorted((apt_dir / "sources.list.d").glob("*.list")),
    ]
    for path in list_files:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                candidates.append(words[1])
    for uri in candidates:
        if uri.startswith(("http://", "https://")):
            return uri.rstrip("/")
    return DEFAULT_DEBIAN_MIRROR


def build_python_base_image(
    client: docker.DockerClient,
    tag: str = DEFAULT_PYTHON_BASE_TAG,
    *,
    suite: str = "bookworm",
    mirror: str | None = None,
    cache_dir: Path = CACHE_DIR,
) -> str:
    """A Debian ``suite`` rootfs with python3 + venv, from debootstrap, imported as ``tag``.

    The rootfs tarball is cached in ``cache_dir`` under a hash of the debootstrap arguments, and
    the import is skipped when ``tag`` already carries that hash; a warm call takes seconds.
    """
    key, tarball_of = _python_rootfs(suite, mirror, cache_dir)
    label = "dockmon-test.base-key"
    existing = _image_with_label(client, tag, label, key)
    if existing:
        return existing
    tarball = tarball_of()
    changes = [
        f"ENV PATH={_SYSTEM_PATH}",
        "ENV LANG=C.UTF-8",
        'CMD ["python3"]',
        f"LABEL {label}={key}",
    ]
    repository, _, tagname = tag.rpartition(":")
    result = client.api.import_image_from_file(
        str(tarball), repository=repository, tag=tagname, changes=changes
    )
    return _import_result_id(client, result, tag)


def _python_rootfs(
    suite: str, mirror: str | None, cache_dir: Path
) -> tuple[str, Callable[[], Path]]:
    """(cache key, make-or-reuse the tarball) of a minimal Debian ``suite`` with python3."""
    mirror = mirror or host_debian_mirror(suite)
    args = [
        "--variant=minbase",
        "--include=python3,python3-venv,ca-certificates",
        f"--arch={_debian_arch()}",
        suite,
    ]
    key = hashlib.sha256(json.dumps(["v1", args, mirror]).encode()).hexdigest()[:16]
    return key, lambda: _cached_rootfs_tarball(cache_dir, f"{suite}-python-{key}", args, mirror)


def python_rootfs_tarball(
    suite: str = "bookworm", *, mirror: str | None = None, cache_dir: Path = CACHE_DIR
) -> Path:
    """The cached debootstrap tarball the Python base image is made from (built if missing)."""
    return _python_rootfs(suite, mirror, cache_dir)[1]()


def _debian_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf", "i686": "i386"}.get(
        machine, machine
    )


def _cached_rootfs_tarball(cache_dir: Path, name: str, args: list[str], mirror: str) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = cache_dir / f"{name}.tar"
    if tarball.exists():
        return tarball
    with open(cache_dir / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building the same tarball
        if tarball.exists():
            return tarball
        work = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=cache_dir))
        try:
            rootfs = work / "rootfs"
            log = work / "debootstrap.log"
            with open(log, "wb") as out:
                proc = subprocess.run(
                    ["debootstrap", *args, str(rootfs), mirror],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=_clean_env_for_host_network(),
                    check=False,
                )
            if proc.returncode != 0:
                raise DockerEnvError(
                    f"debootstrap {' '.join(args)} {mirror} failed ({proc.returncode}):\n"
                    f"{tail(log)}\n--- rootfs/debootstrap/debootstrap.log:\n"
                    f"{tail(rootfs / 'debootstrap' / 'debootstrap.log')}"
                )
            _unmount_under(rootfs)
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "var/log"):
                for p in (rootfs / junk).glob("*"):
                    if p.is_file() or p.is_symlink():
                        p.unlink()
            for p in (rootfs / "var/cache/apt").glob("*.bin"):
                p.unlink()
            partial = work / "rootfs.tar"
            tar_cmd = [
                "tar", "--numeric-owner", "--xattrs", "-C", str(rootfs),
                "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*",
                "-cf", str(partial), ".",
            ]  # fmt: skip
            tar = subprocess.run(
                tar_cmd,
                capture_output=True,
                text=True,
                check=False,
            )
            if tar.returncode != 0:
                raise DockerEnvError(f"tar of {rootfs} failed: {tar.stderr[-2000:]}")
            os.replace(partial, tarball)
        finally:
            remove_tree(work)
    return tarball


def _clean_env_for_host_network() -> dict[str, str]:
    """Host-side downloads (debootstrap, pip) keep the host's proxy settings."""
    env = dict(os.environ)
    env["PATH"] = f"{env.get('PATH', '')}:{_SYSTEM_PATH}"
    return env


_CONTEXT_EXCLUDES = (
    ".git", "__pycache__", "*.pyc", "*.pyo", ".pytest_cache", ".mypy_cache", ".ruff_cache",
    "*.egg-info", "build", "dist", ".venv", "venv", "wheels", ".tox", ".tmp", ".benchmarks",
)  # fmt: skip


def _copy_build_context(repo_root: Path, dest: Path) -> None:
    root = repo_root.resolve()

    def ignore(directory: str, names: list[str]) -> set[str]:
        rel = Path(directory).resolve().relative_to(root)
        skipped = {n for n in names if any(fnmatch.fnmatch(n, pat) for pat in _CONTEXT_EXCLUDES)}
        if rel == Path("bench"):
            skipped.add("results")
        return skipped

    shutil.copytree(root, dest, ignore=ignore, symlinks=True)


def build_agent_image(
    client: docker.DockerClient,
    repo_root: str | os.PathLike[str],
    tag: str = DEFAULT_AGENT_TAG,
    base_image: str = DEFAULT_PYTHON_BASE_TAG,
) -> str:
    """Build the agent image offline (wheels made on the host, ``network_mode="none"``).

    Returns the image id; raises :class:`DockerEnvError` with the pip or build log on failure.
    """
    repo = Path(repo_root).resolve()
    ctx = Path(tempfile.mkdtemp(prefix="dm-ctx-"))
    try:
        src = ctx / "context"
        _copy_build_context(repo, src)
        # Wheel the copy: pip builds local projects in-tree, and the repo is not ours to litter.
        pip_cmd = [
            sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check",
            "--wheel-dir", str(src / "wheels"), str(src),
        ]  # fmt: skip
        wheel = subprocess.run(
            pip_cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=_clean_env_for_host_network(),
            check=False,
        )
        if wheel.returncode != 0:
            raise DockerEnvError(
                f"pip wheel failed ({wheel.returncode}):\n{wheel.stdout[-4000:]}\n"
                f"{wheel.stderr[-4000:]}"
            )
        log: list[str] = []
        image_id: str | None = None
        for chunk in client.api.build(
            path=str(src),
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            network_mode="none",
            buildargs={
                "BASE_IMAGE": base_image,
                "PIP_INSTALL_ARGS": "--no-index --find-links=/tmp/wheels",
            },
            decode=True,
        ):
            if "stream" in chunk:
                log.append(str(chunk["stream"]))
            if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                image_id = str(chunk["aux"]["ID"])
            if "error" in chunk or "errorDetail" in chunk:
                detail = chunk.get("error") or chunk.get("errorDetail")
                raise DockerEnvError(
                    f"docker build of {tag} failed: {detail}\n--- build log:\n"
                    + "".join(log)[-8000:]
                )
        return image_id or str(client.images.get(tag).id)
    finally:
        remove_tree(ctx)


# --------------------------------------------------------------------------------------------
# containers


def wait_for_exit(container: Container, timeout: float = 60.0) -> tuple[int, str]:
    """Wait for ``container`` to exit; return (exit code, combined stdout+stderr)."""
    try:
        result = container.wait(timeout=timeout)
    except Exception as exc:  # requests' ReadTimeout or ConnectionError
        logs = container.logs().decode("utf-8", "replace")
        raise DockerEnvError(f"{container.name} still running after {timeout}s:\n{logs}") from exc
    return int(result["StatusCode"]), container.logs().decode("utf-8", "replace")


DEFAULT_STOP_TIMEOUT = 2
"""Seconds ``docker stop`` (and daemon shutdown) waits before SIGKILL, for container_factory.
``sleep`` as PID 1 ignores SIGTERM, so Docker's default of 10 s would make every stop and every
``PrivateDockerd.restart()`` with a running container take 10 s. ``stop_timeout=`` overrides."""


def create_container(
    client: docker.DockerClient,
    image: str,
    command: str | list[str] | None = None,
    *,
    stop_timeout: int | None = None,
    **kwargs: Any,
) -> Container:
    """``client.containers.create`` plus ``stop_timeout`` (the container's StopTimeout), which
    docker-py only offers on the low-level API."""
    # the same conversion client.containers.create does (private, stable since docker-py 2.0)
    convert = docker.models.containers._create_container_args  # type: ignore[attr-defined]
    args = convert(
        {**kwargs, "image": image, "command": command, "version": client.api.api_version}
    )
    if stop_timeout is not None:
        args["stop_timeout"] = stop_timeout
    created = client.api.create_container(**args)
    return client.containers.get(created["Id"])


@contextlib.contextmanager
def container_factory(
    client: docker.DockerClient, default_image: str
) -> Iterator[ContainerFactory]:
    """Yield ``make(command="sleep 3600", name=None, start=True, **create_kwargs)``.

    Containers come from ``image=`` (default ``default_image``) with ``network_mode="none"``
    unless ``network_mode``/``network`` is given, label ``dockmon-test=1`` and
    ``stop_timeout=DEFAULT_STOP_TIMEOUT`` unless given. All are force-removed on exit.
    """
    created: list[Container] = []

    def make(
        command: str | list[str] | None = "sleep 3600",
        name: str | None = None,
        start: bool = True,
        **create_kwargs: Any,
    ) -> Container:
        image = create_kwargs.pop("image", default_image)
        if "network" not in create_kwargs:
            create_kwargs.setdefault("network_mode", "none")
        create_kwargs.setdefault("stop_timeout", DEFAULT_STOP_TIMEOUT)
        labels = create_kwargs.pop("labels", None) or {}
        if isinstance(labels, list | tuple):
            labels = dict.fromkeys(labels, "")
        container = create_container(
            client, image, command, name=name, labels={**labels, TEST_LABEL: "1"}, **create_kwargs
        )
        created.append(container)
        if start:
            container.start()
            container.reload()
        return container

    try:
        yield make
    finally:
        for container in reversed(created):
            # the daemon may be stopped or gone if the test failed half-way
            with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
                container.remove(force=True, v=True)


def remove_labelled_containers(client: docker.DockerClient, label: str = TEST_LABEL) -> int:
    """Force-remove every container labelled ``label=1``; return how many."""
    removed = 0
    for c in client.containers.list(all=True, filters={"label": f"{label}=1"}):
        with contextlib.suppress(docker.errors.NotFound):
            c.remove(force=True, v=True)
            removed += 1
    return removed


# --------------------------------------------------------------------------------------------
# registry


class LocalRegistry:
    """Debian's ``docker-registry`` (distribution v2) on 127.0.0.1, optionally with htpasswd.

    dockerd treats 127.0.0.0/8 registries as insecure, so ``127.0.0.1:PORT/name:tag`` pushes
    and pulls over plain HTTP from a :class:`PrivateDockerd` without extra configuration.
    """

    def __init__(
        self,
        *,
        username: str | None = None,
        password: str | None = None,
        binary: str = "docker-registry",
        start_timeout: float = 30.0,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        found = shutil.which(binary, path=_clean_env()["PATH"])
        if found is None:
            raise DockerEnvError(f"{binary!r} not found (Debian package docker-registry)")
        self._binary = found
        self.username = username
        self.password = password
        self.start_timeout = start_timeout
        self.root = Path(tempfile.mkdtemp(prefix="dm-reg-"))
        self.log_path = self.root / "registry.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: io.BufferedWriter | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def auth_config(self) -> dict[str, str] | None:
        """For docker-py ``push``/``pull(auth_config=...)``; None without auth."""
        if self.username is None or self.password is None:
            return None
        return {"username": self.username, "password": self.password}

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> Path:
        cfg: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root / "data")},
                "delete": {"enabled": True},
            },
            "http": {"addr": self.address, "secret": secrets.token_hex(16)},
        }
        if self.username is not None and self.password is not None:
            htpasswd = subprocess.run(
                ["htpasswd", "-Bbn", self.username, self.password],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            (self.root / "htpasswd").write_text(htpasswd + "\n")
            cfg["auth"] = {
                "htpasswd": {"realm": "dockmon-test", "path": str(self.root / "htpasswd")}
            }
        path = self.root / "config.yml"
        path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
        return path

    def start(self) -> None:
        if self.running:
            return
        last_error = ""
        for _attempt in range(3):  # the free port may be taken between probe and bind
            self.port = free_port()
            config = self._write_config()
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            self._proc = subprocess.Popen(
                [self._binary, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=_clean_env(),
                start_new_session=True,
                preexec_fn=_set_pdeathsig
                if threading.current_thread() is threading.main_thread()
                else None,
            )
            try:
                self._wait_ready()
                return
            except DockerEnvError as exc:
                last_error = str(exc)
                self.stop()
        raise DockerEnvError(last_error)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise DockerEnvError(
                    f"docker-registry exited with {self._proc.returncode}; "
                    f"log {self.log_path}:\n{tail(self.log_path)}"
                )
            try:
                with opener.open(f"{self.url}/v2/", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except urllib.error.HTTPError as err:
                if err.code == 401 and self.username is not None:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise DockerEnvError(
                    f"docker-registry not ready after {self.start_timeout:.0f}s; "
                    f"log {self.log_path}:\n{tail(self.log_path)}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        self.stop()
        remove_tree(self.root)

    def __enter__(self) -> LocalRegistry:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def repository(self, name: str) -> str:
        """``127.0.0.1:PORT/name`` for tagging and pushing."""
        return f"{self.address}/{name}"

    def tags(self, name: str) -> list[str]:
        """Tags of ``name`` as the registry itself reports them (``/v2/<name>/tags/list``)."""
        req = urllib.request.Request(f"{self.url}/v2/{name}/tags/list")
        if self.username is not None and self.password is not None:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as resp:
            return list(json.load(resp).get("tags") or [])


def iter_stream_errors(chunks: Iterator[dict[str, Any]]) -> Iterator[str]:
    """Error messages in a decoded docker-py push/pull progress stream."""
    for chunk in chunks:
        if "error" in chunk or "errorDetail" in chunk:
            yield str(chunk.get("error") or chunk.get("errorDetail"))
