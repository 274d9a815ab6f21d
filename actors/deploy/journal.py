"""The deployment journal: ``$DATA_PATH/deployments/<key>.json`` (atomic writes, 0600).

A deployment is journaled ``running`` before it is acknowledged and ``finished`` (with its
``deploy_complete`` payload) when it ends; the entry is deleted once a pong proved DockMon read
that result. So the next start reports a deployment the agent was stopped in the middle of
(``running`` left behind) as failed, and resends a result DockMon may not have read. The journal
never holds the compose file, env contents or passwords.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from actors.runtime.fsio import write_json_atomic
from messages.records import record

log = logging.getLogger(__name__)

VERSION = 1
DIRECTORY = "deployments"
TEMP_DIRECTORY = "tmp"  # per-deployment DOCKER_CONFIG/HOME directories live under here


@record
class Entry:
    deployment_id: str
    project: str
    action: str
    state: str  # running | finished
    result: dict[str, Any] | None = None


def key_of(deployment_id: str) -> str:
    return hashlib.sha256(deployment_id.encode()).hexdigest()[:24]


class Journal:
    def __init__(self, data_path: str) -> None:
        self.directory = Path(data_path) / DIRECTORY

    @property
    def temp_root(self) -> Path:
        return self.directory / TEMP_DIRECTORY

    def _path(self, deployment_id: str) -> Path:
        return self.directory / f"{key_of(deployment_id)}.json"

    def write(self, entry: Entry) -> None:
        """Atomic and durable, mode 0600 (actors/runtime/fsio.py). Raises OSError."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        record = {
            "version": VERSION,
            "deployment_id": entry.deployment_id,
            "project": entry.project,
            "action": entry.action,
            "state": entry.state,
            "result": entry.result,
        }
        write_json_atomic(self._path(entry.deployment_id), record, mode=0o600)

    def remove(self, deployment_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(deployment_id).unlink()

    def load_all(self) -> list[Entry]:
        """Every readable entry; unreadable files are logged and left for inspection."""
        if not self.directory.is_dir():
            return []
        entries: list[Entry] = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                entry = Entry(
                    deployment_id=str(raw["deployment_id"]),
                    project=str(raw.get("project", "")),
                    action=str(raw.get("action", "up")),
                    state=str(raw["state"]),
                    result=raw.get("result") if isinstance(raw.get("result"), dict) else None,
                )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error(
                    "deployment journal %s is unreadable (%s); left for inspection", path, exc
                )
                continue
            entries.append(entry)
        return entries

    def clear_temp(self) -> None:
        """Remove per-deployment config directories left by a process that died (they may hold
        registry logins)."""
        root = self.temp_root
        if root.is_dir() and not root.is_symlink():
            for child in root.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
