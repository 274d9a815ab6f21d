"""The private Docker daemon the tests talk to, and nothing else. No pytest dependency.

Safety contract (kept by :class:`PrivateDockerd`):

* It runs its own ``dockerd`` with its own socket, data-root, exec-root, pidfile and config file
  under a short temporary directory, always with ``--bridge=none --iptables=false
  --ip-masq=false --ip6tables=false``: no bridge, no iptables rules, no masquerading, no
  ip6tables. Containers it runs have network ``none`` (or ``host`` to reach a loopback server),
  so no traffic leaves 127.0.0.0/8.
* It never talks to ``/var/run/docker.sock`` or any other daemon, and its environment has no
  proxy or ``DOCKER_*`` variables (:func:`tests.support.hostenv.clean_env`).
* It only ever signals the processes it started: dockerd by pid; containerd, shims and
  container processes only when they are provably its own (their command line or root
  filesystem lies inside its tmp tree).

Images come from :mod:`tests.support.images`, containers from :mod:`tests.support.containers`,
registries from :mod:`tests.support.registry`.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import io
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

import docker

from tests.support.hostenv import DockerEnvError, clean_env, remove_tree, set_pdeathsig, tail


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
        binary = shutil.which(dockerd, path=clean_env()["PATH"])
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
                env=clean_env(),
                start_new_session=True,  # a ^C in the terminal goes to pytest, not to dockerd
                # dies with us if pytest is killed; only from the main thread (pdeathsig is
                # per thread: a worker thread ending would otherwise take the daemon with it)
                preexec_fn=set_pdeathsig if in_main else None,
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
