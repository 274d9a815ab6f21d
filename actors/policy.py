"""What the DockMon server may do on this host: the YAML ``policy`` section, enforced here.

Operations are named as the protocol names them: generic commands (``list_images``,
``update_container``), container actions (``start``, ``remove``), and other request types
(``shell_session``, ``health_check_config``). ``read_only`` allows only operations that change
nothing; ``allow``/``deny`` lists refine that (deny wins); ``protected`` containers (by name
pattern or label) may be looked at but never changed, exec'd into or updated.

Also the append-only audit log: one JSON line per request (who, what, target, result).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

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
    # a deployment's target is its stack; the compose file and env contents are never audited
    target = body.get("project_name" if name == "deploy_compose" else "container_id")
    return name, target if isinstance(target, str) and target else None


def audited(frame: Mapping[str, Any]) -> bool:
    """Whether a request gets an audit line: every one, except shell keystrokes and resizes."""
    if frame.get("type") != "shell_session":
        return True
    payload = frame.get("payload")
    return isinstance(payload, dict) and payload.get("action") in ("start", "close")


@dataclass
class AuditLog:
    """Append-only JSON lines in ``$DATA_PATH/audit.log``; never payloads, never secrets."""

    path: Path
    who: str
    _file: TextIO | None = field(default=None, repr=False)
    _failed: bool = False

    def record(self, at: str, operation: str, target: str | None, result: str) -> None:
        line = {"time": at, "who": self.who, "operation": operation, "result": result}
        if target:
            line["target"] = target
        try:
            if self._file is None:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._file = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
            self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
            self._failed = False
        except OSError as exc:
            if not self._failed:
                log.error("cannot write the audit log %s: %s", self.path, exc.strerror or exc)
            self._failed = True
            self.close()

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None
