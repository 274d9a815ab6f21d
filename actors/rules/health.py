"""Reading ``$DATA_PATH/status.json`` and judging it: what ``dockmon-agent healthcheck`` and
``status`` need, apart from the StatusReporter actor that writes it (actors/status.py), so the
healthcheck Docker runs every 30 s loads neither pykka nor docker-py.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"

__all__ = ["STATUS_FILE", "health_verdict", "read_status"]


def read_status(data_path: str) -> dict[str, Any]:
    """The status file as written by a running agent; raises OSError/ValueError if unusable."""
    data = json.loads((Path(data_path) / STATUS_FILE).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("status file is not a JSON object")
    return data


def _age(stamp: str | None, now: float) -> float | None:
    if not stamp:
        return None
    return now - datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def health_verdict(
    status: dict[str, Any], *, unhealthy_after: float, stale_after: float, now: float | None = None
) -> tuple[bool, str]:
    """(healthy, reason) for Docker's HEALTHCHECK."""
    now = time.time() if now is None else now
    if status.get("stopped"):
        why = status.get("stop_reason") or "stopped"
        return False, f"the agent stopped at {status.get('stopped_at')} ({why})"
    updated = _age(status.get("updated_at"), now)
    if updated is None or updated > stale_after:
        return False, f"status file not updated for {updated or 0:.0f}s: the agent is not running"
    if status.get("docker_reachable") is False:
        return False, f"Docker is unreachable: {status.get('docker_error') or 'unknown error'}"
    if status.get("connected"):
        return True, "registered with DockMon"
    down = _age(status.get("disconnected_since"), now) or 0.0
    if down > unhealthy_after:
        reason = status.get("last_error") or "unknown"
        return False, f"not registered with DockMon for {down:.0f}s (last error: {reason})"
    return True, f"not registered for {down:.0f}s, within the {unhealthy_after:g}s grace period"
