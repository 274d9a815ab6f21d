"""The agent's own sources, scanned line by line by tests that forbid a pattern outside the one
module allowed to use it (durable writes, docker clients, frozen dataclasses)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.hostenv import REPO_ROOT

#: every module the agent ships: the packages and the top-level modules
AGENT_SOURCES = (
    *sorted((REPO_ROOT / "actors").rglob("*.py")),
    *sorted((REPO_ROOT / "messages").rglob("*.py")),
    *(REPO_ROOT / name for name in ("agent_cli.py", "agent_config.py", "supervisor.py")),
)


def lines_matching(pattern: re.Pattern[str], *, allowed: Path) -> list[str]:
    """``path:line: text`` of each line of the agent's sources that ``pattern`` matches, outside
    ``allowed`` (the module whose job it is)."""
    assert allowed in AGENT_SOURCES, f"{allowed} is not one of the agent's sources"
    return [
        f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}"
        for path in AGENT_SOURCES
        if path != allowed
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
