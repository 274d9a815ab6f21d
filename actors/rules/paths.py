"""The system directories no compose path may touch (PROTOCOL §8.2), as pure path rules.

Used by the compose file commands (``actors/commands/compose_files.py``) to confine scans and
reads, and by the configuration to refuse a system directory in ``COMPOSE_ROOTS``.
"""

from __future__ import annotations

import os

#: never scanned or read, whatever the roots (§8.2)
REFUSED_PREFIXES = (
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/boot",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/usr/bin",
    "/usr/sbin",
    "/usr/lib",
    "/etc",
)


def _clean(path: str) -> str:
    """``normpath`` without POSIX's special case for a leading ``//``."""
    cleaned = os.path.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def is_inside(path: str, root: str) -> bool:
    """Whether absolute ``path`` is ``root`` or below it (both already resolved)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def is_system_path(path: str) -> bool:
    """Under one of the refused system directories of §8.2 (lexically, after cleaning)."""
    cleaned = _clean(path)
    return any(is_inside(cleaned, prefix) for prefix in REFUSED_PREFIXES)
