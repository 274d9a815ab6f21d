"""The YAML ``policy`` section as settings, and the rules that need no message type.

:class:`Policy` and :func:`parse_policy` are what the configuration (``agent_config``) reads;
they live apart from :mod:`actors.rules.policy` (the guard, which commands change which
containers, the audit log; it re-exports these) so that reading the configuration, as
``dockmon-agent healthcheck`` does every 30 s, loads no message type.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from messages.records import record

if TYPE_CHECKING:
    from messages.wire import Request

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
DENIED = "denied by the agent's policy"


@record(kw_only=True)
class Policy:
    read_only: bool = False
    allow: frozenset[str] = frozenset()  # empty: everything not denied
    deny: frozenset[str] = frozenset()
    protected_names: tuple[str, ...] = ()  # fnmatch patterns, without leading "/"
    protected_labels: tuple[tuple[str, str | None], ...] = ()  # key, or key=value
    audit: bool = True

    def judge(self, request: Request) -> str | None:
        """Why the request is refused, or None: by what it asks for (its operation), before
        its content is looked at, so a refused request never runs and reads the same whatever
        its payload."""
        return self.check(request.operation)

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


#: operations that change a container (protected containers refuse these): exactly those
#: ``actors.rules.policy.CHANGES`` declares (tests/test_protection.py checks)
CONTAINER_CHANGES = frozenset(
    {
        "start",
        "stop",
        "restart",
        "remove",
        "kill",
        "rename",
        "update_container",
        "shell_session",
        "delete_network",
        "remove_image",
        "self_update",
        "deploy_compose",
    }
)


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
