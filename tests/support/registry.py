"""A real image registry on loopback, for pulls and updates. No pytest dependency.

:class:`LocalRegistry` runs Debian's ``docker-registry`` on 127.0.0.1 only (optionally behind
htpasswd), with its own storage under a temporary directory, and signals only the process it
started. It starts no Docker daemon: pushes and pulls go through the session's
:class:`~tests.support.daemon.PrivateDockerd`, which always runs with ``--bridge=none
--iptables=false --ip-masq=false --ip6tables=false``.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.hostenv import (
    DockerEnvError,
    clean_env,
    free_port,
    remove_tree,
    set_pdeathsig,
    tail,
)


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
        found = shutil.which(binary, path=clean_env()["PATH"])
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
                env=clean_env(),
                start_new_session=True,
                preexec_fn=set_pdeathsig
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
