"""What the DockMon server may do on this host: the YAML ``policy`` section, enforced here.

Operations are named as the protocol names them: generic commands (``list_images``,
``update_container``), container actions (``start``, ``remove``), and other request types
(``shell_session``, ``health_check_config``). ``read_only`` allows only operations that change
nothing; ``allow``/``deny`` lists refine that (deny wins); ``protected`` containers (by name
pattern or label) may be looked at but never changed, exec'd into or updated.

Also the append-only audit log: one JSON line per request (who, what, target, result).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: operations that change nothing on the host
READ_OPERATIONS = frozenset(
    {
        "list_containers",
        "inspect",
        "get_logs",
        "list_images",
        "list_networks",
        "list_volumes",
        "scan_compose_dirs",
        "read_compose_file",
    }
)
#: operations aimed at one container that change it (protected containers refuse these)
CONTAINER_CHANGES = frozenset(
    {"start", "stop", "restart", "kill", "remove", "rename", "update_container", "shell_session"}
)
DENIED = "denied by the agent's policy"


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    read_only: bool = False
    allow: frozenset[str] = frozenset()  # empty: everything not denied
    deny: frozenset[str] = frozenset()
    protected_names: tuple[str, ...] = ()  # fnmatch patterns, without leading "/"
    protected_labels: tuple[tuple[str, str | None], ...] = ()  # key, or key=value
    audit: bool = True

    def check(self, operation: str) -> str | None:
        """Why ``operation`` is refused, or None."""
        if operation in self.deny:
            return f"{DENIED}: {operation} is in policy.deny"
        if self.allow and operation not in self.allow:
            return f"{DENIED}: {operation} is not in policy.allow"
        if self.read_only and operation not in READ_OPERATIONS and operation not in self.allow:
            return f"{DENIED}: read_only is set and {operation} changes the host"
        return None

    @property
    def protects_containers(self) -> bool:
        return bool(self.protected_names or self.protected_labels)

    def check_container(
        self, operation: str, name: str, labels: Mapping[str, str] | None
    ) -> str | None:
        """Why ``operation`` on the container ``name`` with ``labels`` is refused, or None."""
        if operation not in CONTAINER_CHANGES:
            return None
        bare = name.lstrip("/")
        for pattern in self.protected_names:
            if fnmatch.fnmatchcase(bare, pattern):
                return f"{DENIED}: container {bare} matches protected name {pattern!r}"
        for key, value in self.protected_labels:
            if labels and key in labels and (value is None or labels[key] == value):
                shown = key if value is None else f"{key}={value}"
                return f"{DENIED}: container {bare} has protected label {shown}"
        return None


_KNOWN_KEYS = {"read_only", "allow", "deny", "protected_containers", "audit_log"}


def parse_policy(raw: Any, where: str, problems: list[str]) -> Policy:
    """The YAML ``policy`` mapping -> Policy; every problem goes to ``problems``."""
    if raw is None:
        return Policy()
    if not isinstance(raw, dict):
        problems.append(f"{where}: policy must be a mapping")
        return Policy()
    for key in raw:
        if key not in _KNOWN_KEYS:
            problems.append(
                f"{where}: unknown policy key {key!r} (known: {', '.join(sorted(_KNOWN_KEYS))})"
            )

    def flag(key: str, default: bool) -> bool:
        value = raw.get(key, default)
        if not isinstance(value, bool):
            problems.append(f"{where}: policy.{key} must be true or false")
            return default
        return value

    def names(value: Any, key: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            problems.append(f"{where}: policy.{key} must be a list of names")
            return ()
        return tuple(value)

    protected = raw.get("protected_containers")
    if protected is None:
        protected = {}
    elif not isinstance(protected, dict):
        problems.append(f"{where}: policy.protected_containers must be a mapping")
        protected = {}
    labels: list[tuple[str, str | None]] = []
    for item in names(protected.get("labels"), "protected_containers.labels"):
        key, sep, value = item.partition("=")
        labels.append((key, value if sep else None))
    return Policy(
        read_only=flag("read_only", False),
        allow=frozenset(names(raw.get("allow"), "allow")),
        deny=frozenset(names(raw.get("deny"), "deny")),
        protected_names=names(protected.get("names"), "protected_containers.names"),
        protected_labels=tuple(labels),
        audit=flag("audit_log", True),
    )


def operation_of(frame: Mapping[str, Any]) -> tuple[str, str | None]:
    """(operation name, target container or None) of a request frame from the backend."""
    kind = str(frame.get("type"))
    payload = frame.get("payload")
    body: Mapping[str, Any] = payload if isinstance(payload, dict) else {}
    if kind == "command":
        name = str(frame.get("command"))
    elif kind == "container_operation":
        name = str(body.get("action"))
    else:
        name = kind
    target = body.get("container_id")
    return name, target if isinstance(target, str) and target else None


def audited(frame: Mapping[str, Any]) -> bool:
    """Whether a request gets an audit line: every one, except shell keystrokes and resizes."""
    if frame.get("type") != "shell_session":
        return True
    payload = frame.get("payload")
    return isinstance(payload, dict) and payload.get("action") in ("start", "close")


#: a write that keeps failing is logged again at most this often
AUDIT_FAILURE_LOG_INTERVAL = 3600.0


@dataclass
class AuditLog:
    """Append-only JSON lines in ``$DATA_PATH/audit.log``; never payloads, never secrets.

    A full or read-only DATA_PATH never breaks a request: :meth:`record` never raises. A line
    that cannot be written whole is cut off again (never half a line in the log) and counted;
    the failure is logged once, then at most once an hour while it lasts, and the recovery is
    logged with the number of lines lost.
    """

    path: Path
    who: str
    _fd: int | None = field(default=None, repr=False)
    failures: int = 0  # lines lost since the process started
    _failing_since: int = 0  # lines lost in the current failure
    _logged_at: float = field(default=-AUDIT_FAILURE_LOG_INTERVAL, repr=False)

    def record(self, at: str, operation: str, target: str | None, result: str) -> str | None:
        """Append one line; returns None, or why the line could not be written."""
        line = {"time": at, "who": self.who, "operation": operation, "result": result}
        if target:
            line["target"] = target
        data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
        try:
            if self._fd is None:
                self._fd = os.open(
                    self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
                )
            self._append(self._fd, data)
        except OSError as exc:
            self.close()
            return self._failed(exc)
        if self._failing_since:
            log.info(
                "the audit log %s is written again (%d line(s) were lost)",
                self.path,
                self._failing_since,
            )
            self._failing_since = 0
        return None

    @staticmethod
    def _append(fd: int, data: bytes) -> None:
        end = os.lseek(fd, 0, os.SEEK_END)
        written = os.write(fd, data)
        if written != len(data):  # the disk filled up inside the line: take the part back
            with contextlib.suppress(OSError):
                os.ftruncate(fd, end)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def _failed(self, exc: OSError) -> str:
        self.failures += 1
        self._failing_since += 1
        error = f"{self.path}: {exc.strerror or exc}"
        now = time.monotonic()
        if self._failing_since == 1 or now - self._logged_at >= AUDIT_FAILURE_LOG_INTERVAL:
            self._logged_at = now
            log.error(
                "cannot write the audit log %s; requests are still served (%d line(s) lost so far)",
                error,
                self._failing_since,
            )
        return error

    def close(self) -> None:
        """Never raises (there is no buffer to flush: each line is one write)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
