"""What a flow of the Updater stands on: its settings, the context a flow thread may use (Docker,
the journal directory, progress events, a clock) and the process-wide registry of running flows.

The flows (container_update, self_update) import these from here, not from the actor that runs
them, so the imports run one way: flows <- actors/updater.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker

from actors.base import Clock, Peers
from messages.common import RawJson
from messages.docker import Reply
from messages.outbound import EventOut
from messages.records import record
from messages.roles import Role

#: a pending self-update hand-over in $DATA_PATH (the Go agent's name and fields, §7.3 step 4)
CLEANUP_FILE = "cleanup.json"


@record(kw_only=True)
class UpdaterSettings:
    docker_host: str
    data_path: str
    docker_api_version: str | None = None
    own_container_id: str | None = None
    self_update_image: str | None = None
    handover_timeout: float = 120.0


class FlowRegistry:
    """Process-wide set of running flows, keyed by what they work on (a full container id)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, str] = {}  # key -> flow id

    def claim(self, key: str, flow_id: str) -> bool:
        with self._lock:
            if key in self._running:
                return False
            self._running[key] = flow_id
            return True

    def release(self, flow_id: str) -> None:
        with self._lock:
            for key in [k for k, v in self._running.items() if v == flow_id]:
                del self._running[key]

    def busy(self, key: str) -> bool:
        with self._lock:
            return key in self._running


class FlowContext:
    """What a flow thread may use: Docker, the journal directory, progress events, a clock."""

    def __init__(
        self,
        settings: UpdaterSettings,
        peers: Peers,
        clock: Clock,
        flow_id: str,
        client_factory: Callable[[], docker.APIClient],
    ) -> None:
        self.settings = settings
        self.flow_id = flow_id
        self.clock = clock
        self.cancelled = threading.Event()
        self._peers = peers
        self._client_factory = client_factory
        self._client: docker.APIClient | None = None

    @property
    def journal_dir(self) -> Path:
        return Path(self.settings.data_path) / "updates"

    def client(self) -> docker.APIClient:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def tell(self, role: Role, message: Any) -> bool:
        """Tell another actor (e.g. the Connection during a self-update hand-over)."""
        return self._peers.tell(role, message)

    def reply(self, reply: Reply) -> None:
        """Answer the request that started this flow (before any progress event)."""
        self._peers.tell(Role.CONNECTION, reply)

    def emit(self, command: str, payload: dict[str, Any]) -> None:
        """Send an event (``update_progress``, ``selfupdate_progress``, ...) to the backend."""
        self._peers.tell(Role.CONNECTION, EventOut(command=command, payload=RawJson.of(payload)))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
