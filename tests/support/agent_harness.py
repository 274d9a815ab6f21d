"""Run the real agent in-process (supervisor + actors) against a FakeHub and the private dockerd."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka

import agent_config
from actors.link.websocket import LinkSettings
from agent_cli import build_specs, link_settings_for, shutdown_deadline
from messages.roles import Role
from supervisor import Supervisor
from tests.support.hub import FakeHub

REGISTRATION_TOKEN = "7c0e2f4a-1b9d-4e55-9a61-2f0c3d4b5e6f"


@dataclass
class RunningAgent:
    hub: FakeHub
    supervisor: Supervisor
    config: agent_config.Config
    link: LinkSettings

    @property
    def token_file(self) -> Path:
        return Path(self.config.data_path) / "permanent_token"

    def crash(self, role: Role) -> None:
        """Make ``role``'s current actor raise inside a handler (a tell, so it dies)."""
        ref = self.supervisor.peers.get(role)
        assert ref is not None, f"{role} is not running"
        ref.tell(pykka.messages.ProxyCall(attr_path=("no_such_handler",), args=(), kwargs={}))


@contextlib.contextmanager
def running_agent(
    data_path: Path,
    docker_host: str,
    *,
    hub: FakeHub | None = None,
    link: Mapping[str, Any] | None = None,
    **env: str,
) -> Iterator[RunningAgent]:
    """``link`` overrides LinkSettings timings (e.g. ``dead_after=2``) for fault tests."""
    own_hub = hub is None
    hub = hub or FakeHub().start()
    if own_hub:
        hub.add_registration_token(REGISTRATION_TOKEN)
    environ = {
        "DOCKMON_URL": hub.url,
        "REGISTRATION_TOKEN": REGISTRATION_TOKEN,
        "DATA_PATH": str(data_path),
        "DOCKER_HOST": docker_host,
        "RECONNECT_INITIAL": "100ms",
        "RECONNECT_MAX": "1s",
        "LOG_JSON": "false",
        **env,
    }
    cfg = agent_config.load_config(environ)
    settings = dataclasses.replace(link_settings_for(cfg), **(link or {}))
    sup = Supervisor(
        build_specs(cfg, link_settings=settings),
        restart_delay=(0.05, 0.5),
        shutdown_deadline=shutdown_deadline(cfg),
    ).start()
    try:
        yield RunningAgent(hub, sup, cfg, settings)
    finally:
        sup.stop("test finished")
        if own_hub:
            hub.stop()
