"""Strict payload checks for agent events, by event ``command`` (used by tests/support/hub.py).

Each validator gets the event payload (already known to be an object) and returns a problem
description, or None when the payload is exactly what the backend expects.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

EventValidator = Callable[[dict[str, Any]], str | None]

#: command -> validator; families add theirs here
EVENT_VALIDATORS: dict[str, EventValidator] = {}


# --- health_check_result (PROTOCOL §5.4) ---------------------------------------------------------

HEALTH_RESULT_REQUIRED = frozenset(
    {"container_id", "host_id", "healthy", "response_time_ms", "timestamp"}
)
HEALTH_RESULT_OPTIONAL = frozenset({"status_code", "error_message"})
_WHOLE_SECOND_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def health_check_result_problem(payload: dict[str, Any]) -> str | None:
    """Go's ``HealthCheckResult``: ``status_code`` omitted when 0, ``error_message`` omitted
    when empty (healthy) and always set when unhealthy; timestamp UTC whole seconds."""
    keys = set(payload)
    missing = sorted(HEALTH_RESULT_REQUIRED - keys)
    extra = sorted(keys - HEALTH_RESULT_REQUIRED - HEALTH_RESULT_OPTIONAL)
    if missing or extra:
        return f"missing keys {missing}, unexpected keys {extra}"
    if not isinstance(payload["container_id"], str) or not payload["container_id"]:
        return "container_id must be a non-empty string"
    if not isinstance(payload["host_id"], str):
        return "host_id must be a string"
    healthy = payload["healthy"]
    if not isinstance(healthy, bool):
        return "healthy must be a boolean"
    if not _is_int(payload["response_time_ms"]) or payload["response_time_ms"] < 0:
        return "response_time_ms must be a non-negative integer"
    if "status_code" in payload:
        code = payload["status_code"]
        if not _is_int(code) or not 100 <= code <= 999:
            return "status_code must be an HTTP status integer (omitted when there is none)"
    elif healthy:
        return "a healthy result must carry its status_code"
    if healthy and "error_message" in payload:
        return "error_message must be omitted when healthy"
    if not healthy and (
        not isinstance(payload.get("error_message"), str) or not payload["error_message"]
    ):
        return "an unhealthy result must carry a non-empty error_message"
    stamp = payload["timestamp"]
    if not isinstance(stamp, str) or _WHOLE_SECOND_UTC.fullmatch(stamp) is None:
        return "timestamp must be RFC 3339 UTC in whole seconds (2026-07-13T20:06:00Z)"
    try:
        datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return "timestamp is not a valid date"
    return None


EVENT_VALIDATORS["health_check_result"] = health_check_result_problem


# --- selfupdate_progress (PROTOCOL §5.6) ---------------------------------------------------------

SELFUPDATE_STAGES = frozenset(
    {"pull", "inspect", "create", "start", "health", "complete"}  # container mode
    | {"download", "verify", "chmod", "prepare"}  # native mode (Go only)
)


def selfupdate_progress_problem(payload: dict[str, Any]) -> str | None:
    """``{stage, message}`` or ``{stage, message: "Error occurred", error}``."""
    keys = set(payload)
    if keys not in ({"stage", "message"}, {"stage", "message", "error"}):
        return f"keys must be stage, message [, error], got {sorted(keys)}"
    if payload["stage"] not in SELFUPDATE_STAGES:
        return f"unknown stage {payload['stage']!r}"
    if not isinstance(payload["message"], str) or not payload["message"]:
        return "message must be a non-empty string"
    if "error" in payload:
        if payload["message"] != "Error occurred":
            return "an error payload's message must be exactly 'Error occurred'"
        if not isinstance(payload["error"], str) or not payload["error"]:
            return "error must be a non-empty string"
    return None


EVENT_VALIDATORS["selfupdate_progress"] = selfupdate_progress_problem


# --- shell_data (PROTOCOL §5.8) ------------------------------------------------------------------

SHELL_DATA_ACTIONS = frozenset({"started", "data", "closed", "error"})
_PADDED_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def shell_data_problem(payload: dict[str, Any]) -> str | None:
    """``session_id`` + ``action``; ``data`` (padded standard base64) only for ``data``,
    ``error`` (non-empty text) only for ``error``; nothing else."""
    action = payload.get("action")
    if action not in SHELL_DATA_ACTIONS:
        return f"action must be one of {sorted(SHELL_DATA_ACTIONS)}, got {action!r}"
    expected = {"session_id", "action"} | (
        {"data"} if action == "data" else {"error"} if action == "error" else set()
    )
    if set(payload) != expected:
        return f"a {action} payload has exactly the keys {sorted(expected)}, got {sorted(payload)}"
    if not isinstance(payload["session_id"], str) or not payload["session_id"]:
        return "session_id must be a non-empty string"
    if action == "data":
        data = payload["data"]
        if not isinstance(data, str) or not data or _PADDED_BASE64.fullmatch(data) is None:
            return "data must be non-empty padded standard base64"
    if action == "error" and (not isinstance(payload["error"], str) or not payload["error"]):
        return "error must be a non-empty string"
    return None


EVENT_VALIDATORS["shell_data"] = shell_data_problem


# --- container-update events (PROTOCOL §5.5) -----------------------------------------------------

UPDATE_STAGES = frozenset(
    {"pulling", "configuring", "backup", "creating", "starting", "health_check", "dependents"}
    | {"cleanup", "completed", "failed", "rollback"}
)
LAYER_STATUS_ORDER = (
    "Downloading", "Extracting", "Verifying Checksum", "Download complete", "Pull complete",
    "Already exists", "Waiting", "Pulling fs layer",
)  # fmt: skip
_ID12 = re.compile(r"[0-9a-f]{12}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def update_progress_problem(payload: dict[str, Any]) -> str | None:
    """Exactly ``{container_id (12 chars), stage (§5.5 list), message}``."""
    if set(payload) != {"container_id", "stage", "message"}:
        return f"keys must be container_id, stage, message, got {sorted(payload)}"
    cid = payload["container_id"]
    if not isinstance(cid, str) or _ID12.fullmatch(cid) is None:
        return f"container_id must be a 12-char hex id, got {cid!r}"
    if payload["stage"] not in UPDATE_STAGES:
        return f"unknown stage {payload['stage']!r}"
    if not isinstance(payload["message"], str) or not payload["message"]:
        return "message must be a non-empty string"
    return None


def update_layer_progress_problem(payload: dict[str, Any]) -> str | None:
    keys = {
        "container_id", "overall_progress", "total_layers", "remaining_layers", "summary",
        "speed_mbps", "layers",
    }  # fmt: skip
    if set(payload) != keys:
        return f"keys must be {sorted(keys)}, got {sorted(payload)}"
    cid = payload["container_id"]
    if not isinstance(cid, str) or _ID12.fullmatch(cid) is None:
        return f"container_id must be a 12-char hex id, got {cid!r}"
    for key in ("overall_progress", "total_layers", "remaining_layers"):
        if not _is_int(payload[key]) or payload[key] < 0:
            return f"{key} must be a non-negative integer"
    if payload["overall_progress"] > 100:
        return "overall_progress must be a percentage"
    if not isinstance(payload["summary"], str) or not payload["summary"]:
        return "summary must be a non-empty string"
    if not _is_number(payload["speed_mbps"]) or payload["speed_mbps"] < 0:
        return "speed_mbps must be a non-negative number"
    layers = payload["layers"]
    if not isinstance(layers, list) or len(layers) > 20:
        return "layers must be a list of at most 20 entries"
    if payload["remaining_layers"] != payload["total_layers"] - len(layers):
        return "remaining_layers must count the layers left out of the list"
    ranks = []
    for layer in layers:
        if not isinstance(layer, dict) or set(layer) != {
            "id", "status", "current", "total", "percent"
        }:  # fmt: skip
            return f"a layer must be exactly id, status, current, total, percent: {layer!r}"
        if not isinstance(layer["id"], str) or not isinstance(layer["status"], str):
            return "layer id and status must be strings"
        if not all(_is_int(layer[k]) and layer[k] >= 0 for k in ("current", "total", "percent")):
            return "layer current, total and percent must be non-negative integers"
        status = layer["status"]
        ranks.append(LAYER_STATUS_ORDER.index(status) if status in LAYER_STATUS_ORDER else 99)
    if ranks != sorted(ranks):
        return "layers must be sorted by status priority"
    return None


def update_complete_problem(payload: dict[str, Any]) -> str | None:
    """``old_container_id`` (the 12-char id the backend sent), ``new_container_id`` (12),
    ``container_name``; ``failed_dependents`` only when non-empty."""
    base = {"old_container_id", "new_container_id", "container_name"}
    if set(payload) not in (base, base | {"failed_dependents"}):
        return f"keys must be {sorted(base)} [+ failed_dependents], got {sorted(payload)}"
    old = payload["old_container_id"]
    if not isinstance(old, str) or _ID12.fullmatch(old) is None:
        return f"old_container_id must be a 12-char hex id (the one the backend sent), got {old!r}"
    new = payload["new_container_id"]
    if not isinstance(new, str) or _ID12.fullmatch(new) is None:
        return f"new_container_id must be a 12-char hex id, got {new!r}"
    if not isinstance(payload["container_name"], str) or not payload["container_name"]:
        return "container_name must be a non-empty string"
    if "failed_dependents" in payload:
        failed = payload["failed_dependents"]
        if not isinstance(failed, list) or not failed:
            return "failed_dependents must be a non-empty list (omitted when empty)"
        if not all(isinstance(n, str) and n for n in failed):
            return "failed_dependents must hold container names"
    return None


EVENT_VALIDATORS["update_progress"] = update_progress_problem
EVENT_VALIDATORS["update_layer_progress"] = update_layer_progress_problem
EVENT_VALIDATORS["update_complete"] = update_complete_problem


# --- container_stats (PROTOCOL §5.2; also each stats-ingest message, §1.5) ------------------------

CONTAINER_STATS_KEYS = frozenset(
    {
        "container_id",
        "container_name",
        "cpu_percent",
        "memory_usage",
        "memory_limit",
        "memory_percent",
        "network_rx",
        "network_tx",
        "disk_read",
        "disk_write",
        "timestamp",
    }
)
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


def container_stats_problem(payload: dict[str, Any]) -> str | None:
    keys = set(payload)
    if keys != CONTAINER_STATS_KEYS:
        missing = sorted(CONTAINER_STATS_KEYS - keys)
        extra = sorted(keys - CONTAINER_STATS_KEYS)
        return f"keys must be exactly the §5.2 ones (missing {missing}, extra {extra})"
    container_id = payload["container_id"]
    if not isinstance(container_id, str) or _CONTAINER_ID.fullmatch(container_id) is None:
        return "container_id must be the full 64-char lowercase hex ID"
    if not isinstance(payload["container_name"], str):
        return "container_name must be a string"
    for key in ("cpu_percent", "memory_percent"):
        value = payload[key]
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            return f"{key} must be a non-negative number"
        if round(float(value), 1) != value:
            return f"{key} must be rounded to 1 decimal, got {value!r}"
    for key in (
        "memory_usage",
        "memory_limit",
        "network_rx",
        "network_tx",
        "disk_read",
        "disk_write",
    ):
        if not _is_int(payload[key]) or payload[key] < 0:
            return f"{key} must be a non-negative integer (bytes)"
    timestamp = payload["timestamp"]
    if not isinstance(timestamp, str) or _WHOLE_SECOND_UTC.fullmatch(timestamp) is None:
        return "timestamp must be RFC 3339 UTC in whole seconds (2026-07-13T20:05:01Z)"
    try:
        datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return "timestamp is not a valid date"
    return None


EVENT_VALIDATORS["container_stats"] = container_stats_problem


# --- deploy_progress / deploy_complete (PROTOCOL §5.7, §8.1) -------------------------------------

DEPLOY_STAGES = frozenset(
    {
        "starting", "executing", "waiting_for_health", "validating", "parsing",
        "creating_networks", "creating_volumes", "pulling_image", "creating", "health_check",
        "completed", "failed",
    }
)  # fmt: skip
DEPLOY_ACTIONS = frozenset({"up", "down", "restart"})
DEPLOY_SERVICE_REQUIRED = frozenset({"container_id", "container_name", "image", "status"})
DEPLOY_SERVICE_OPTIONAL = frozenset({"restart_policy", "exit_code"})
DEPLOY_COMPLETE_KEYS = frozenset(
    {"deployment_id", "action", "success", "partial_success", "services", "failed_services"}
    | {"error"}
)


def _non_empty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def deploy_progress_problem(payload: dict[str, Any]) -> str | None:
    """``{deployment_id, stage, message}``; the optional ``services`` list the backend reads."""
    keys = set(payload)
    if not {"deployment_id", "stage", "message"} <= keys <= {
        "deployment_id", "stage", "message", "services"
    }:  # fmt: skip
        return f"keys must be deployment_id, stage, message [, services], got {sorted(keys)}"
    if not _non_empty_str(payload["deployment_id"]):
        return "deployment_id must be a non-empty string"
    if payload["stage"] not in DEPLOY_STAGES:
        return f"unknown stage {payload['stage']!r} (the backend maps it to 'creating')"
    if not _non_empty_str(payload["message"]):
        return "message must be a non-empty string"
    if "services" in payload:
        services = payload["services"]
        if not isinstance(services, list) or not all(
            isinstance(s, dict)
            and _non_empty_str(s.get("name"))
            and isinstance(s.get("status"), str)
            for s in services
        ):
            return "services must be a list of {name, status, …} objects"
    return None


def deploy_complete_problem(payload: dict[str, Any]) -> str | None:
    """Go's ``DeployResult``: empty/false fields omitted, 12-hex ids, an error on failure."""
    extra = sorted(set(payload) - DEPLOY_COMPLETE_KEYS)
    if extra:
        return f"unexpected keys {extra}"
    if not _non_empty_str(payload.get("deployment_id")):
        return "deployment_id must be a non-empty string"
    if not isinstance(payload.get("success"), bool):
        return "success must be a boolean"
    if "action" in payload and payload["action"] not in DEPLOY_ACTIONS:
        return f"action must echo the request (up, down, restart), got {payload['action']!r}"
    if "partial_success" in payload and payload["partial_success"] is not True:
        return "partial_success must be omitted when false"
    if payload.get("partial_success") and payload["success"]:
        return "partial_success with success true"
    if "error" in payload and not _non_empty_str(payload["error"]):
        return "error must be a non-empty string (omitted when empty)"
    if not payload["success"] and "error" not in payload:
        return "a failed deployment must carry an error"
    services = payload.get("services")
    if services is not None:
        if not isinstance(services, dict) or not services:
            return "services must be a non-empty object (omitted when empty)"
        for name, entry in services.items():
            if not isinstance(entry, dict):
                return f"services[{name!r}] must be an object"
            keys = set(entry)
            if (
                not DEPLOY_SERVICE_REQUIRED
                <= keys
                <= DEPLOY_SERVICE_REQUIRED | DEPLOY_SERVICE_OPTIONAL
            ):
                return f"services[{name!r}] has keys {sorted(keys)}"
            if not isinstance(entry["container_id"], str) or not _ID12.fullmatch(
                entry["container_id"]
            ):
                return f"services[{name!r}].container_id must be a 12-char hex id"
            for key in ("container_name", "image", "status"):
                if not _non_empty_str(entry[key]):
                    return f"services[{name!r}].{key} must be a non-empty string"
            if "restart_policy" in entry and not _non_empty_str(entry["restart_policy"]):
                return f"services[{name!r}].restart_policy must be omitted when empty"
            if "exit_code" in entry and (
                not _is_int(entry["exit_code"]) or entry["exit_code"] == 0
            ):
                return f"services[{name!r}].exit_code must be a non-zero integer (omitted when 0)"
    failed = payload.get("failed_services")
    if failed is not None:
        if not isinstance(failed, list) or not failed or not all(_non_empty_str(f) for f in failed):
            return "failed_services must be a non-empty list of names (omitted when empty)"
        if payload["success"]:
            return "failed_services on a successful deployment"
        if services is not None and not set(failed) <= set(services):
            return "failed_services must name services of the result"
    if payload.get("partial_success") and not failed:
        return "a partial success must list its failed_services"
    return None


EVENT_VALIDATORS["deploy_progress"] = deploy_progress_problem
EVENT_VALIDATORS["deploy_complete"] = deploy_complete_problem
