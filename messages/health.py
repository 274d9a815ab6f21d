"""Agent-side HTTP health checks: the three configuration frames (PROTOCOL §4.6).

``health_check_configs_sync`` (replace the whole set), ``health_check_config`` (add or replace one
check by ``container_id``) and ``health_check_config_remove``. They carry no id and get no reply:
a malformed frame or config is logged and ignored (PROTOCOL §11), never a crash. Config values
are validated here once, so the actor only ever sees well-typed :class:`HealthCheckConfig`s.

Work per frame is bounded and stays off the Connection's thread: the Connection's decoders only
check the frame's shape and the number of configs (at most :data:`MAX_HEALTH_CHECKS`; a larger
sync is refused whole with one log line) and route the configs as raw JSON; the HealthChecks
actor validates them (:func:`parse_sync`, linear, one summary line however many are bad). Each
config is bounded too: at most :data:`MAX_HEADERS` headers and :data:`MAX_STATUS_PARTS` parts
in ``expected_status_codes``, a URL of at most :data:`MAX_URL_LENGTH` characters.

Credentials (``auth_config_json``, and every header value, since headers often carry API keys)
travel as :class:`Secret` and never appear in a log line or an error text.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from messages.common import RawJson, Secret
from messages.decoding import CommandDecoder
from messages.records import record
from messages.references import CONTAINER, BadReference, ContainerRef
from messages.roles import Role

log = logging.getLogger(__name__)

DEFAULT_STATUS_RANGES: tuple[tuple[int, int], ...] = ((200, 200),)
#: checks one agent runs at most (one per container is the usual case)
MAX_HEALTH_CHECKS = 1000
#: per config: headers in ``headers_json``, parts of ``expected_status_codes``, URL length
MAX_HEADERS = 64
MAX_STATUS_PARTS = 64
MAX_URL_LENGTH = 8192


@record(kw_only=True)
class HealthCheckAuth:
    """``{"type":"basic","username","password"}`` or ``{"type":"bearer","token"}``."""

    kind: str  # "basic" | "bearer"
    username: str = ""
    secret: Secret  # the basic password or the bearer token


@record(kw_only=True)
class HealthCheckConfig:
    container_id: ContainerRef
    host_id: str
    enabled: bool = True
    url: str
    method: str = "GET"
    expected_status_codes: str = ""  # as sent, for logs
    status_ranges: tuple[tuple[int, int], ...] = DEFAULT_STATUS_RANGES  # inclusive (lo, hi)
    timeout_seconds: int = 10  # as sent (<= 0 means 10 s, see effective_timeout)
    check_interval_seconds: int = 30
    follow_redirects: bool = True
    verify_ssl: bool = True
    headers: tuple[tuple[str, Secret], ...] = ()
    auth: HealthCheckAuth | None = None

    @property
    def effective_timeout(self) -> int:
        return self.timeout_seconds if self.timeout_seconds > 0 else 10

    def expects(self, status: int) -> bool:
        return any(lo <= status <= hi for lo, hi in self.status_ranges)


@record(kw_only=True)
class SyncHealthChecks:
    """Replace the whole set with ``configs``: a JSON list of at most MAX_HEALTH_CHECKS config
    objects as received, validated by the HealthChecks actor (:func:`parse_sync`)."""

    configs: RawJson
    count: int


@record(kw_only=True)
class SetHealthCheck:
    """Add or replace one check: ``config`` is the config object as received (JSON)."""

    config: RawJson


@record(kw_only=True)
class RemoveHealthCheck:
    container_id: ContainerRef


@record(kw_only=True)
class CheckOutcome:
    """What one HTTP check found; ``status_code`` 0 means no HTTP response."""

    healthy: bool
    status_code: int = 0
    response_time_ms: int = 0
    error_message: str = ""


@record(kw_only=True)
class HealthTick:
    """HealthCheckActor-internal: the 1 s scheduler tick of check loop ``loop``."""

    loop: int


@record(kw_only=True)
class CheckFinished:
    """HealthCheckActor-internal: a worker finished run ``run_id`` (started in loop ``loop``)."""

    loop: int
    run_id: int
    container_id: str
    host_id: str
    outcome: CheckOutcome


@record(kw_only=True)
class CheckOverdue:
    """HealthCheckActor-internal: run ``run_id`` should have ended by now (hard deadline)."""

    loop: int
    run_id: int
    container_id: str
    host_id: str
    timeout_seconds: int
    started: float  # monotonic


class BadConfig(Exception):
    """A config that cannot be used; the message never contains a credential."""


# --- pure parsing ----------------------------------------------------------------------------

_INT = re.compile(r"[+-]?\d+")


def parse_status_codes(text: str) -> tuple[tuple[int, int], ...]:
    """Go's ``parseStatusCodes``: comma list of codes and ``a-b`` ranges; nothing usable -> 200.

    Unparsable parts and reversed ranges are skipped, like the Go agent does; more than
    MAX_STATUS_PARTS parts is a BadConfig (every check would scan them all).
    """
    if text.count(",") >= MAX_STATUS_PARTS:
        raise BadConfig(f"expected_status_codes has more than {MAX_STATUS_PARTS} parts")
    ranges: list[tuple[int, int]] = []
    for raw_part in text.split(","):
        part = raw_part.strip()
        if "-" in part:
            bounds = [b.strip() for b in part.split("-")]
            if len(bounds) == 2 and all(_INT.fullmatch(b) for b in bounds):
                lo, hi = int(bounds[0]), int(bounds[1])
                if lo <= hi:
                    ranges.append((lo, hi))
        elif _INT.fullmatch(part):
            code = int(part)
            ranges.append((code, code))
    return tuple(ranges) or DEFAULT_STATUS_RANGES


def _str(cfg: Mapping[str, Any], key: str, default: str = "") -> str:
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise BadConfig(f"{key} must be a string, got {type(value).__name__}")
    return value


def _bool(cfg: Mapping[str, Any], key: str, default: bool) -> bool:
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadConfig(f"{key} must be a boolean, got {type(value).__name__}")
    return value


def _int(cfg: Mapping[str, Any], key: str, default: int) -> int:
    value = cfg.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadConfig(f"{key} must be a number, got {type(value).__name__}")
    if isinstance(value, float) and not value.is_integer():
        raise BadConfig(f"{key} must be a whole number of seconds")
    return int(value)


def _json_object(cfg: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    """An embedded JSON document: empty/absent -> None; bad JSON or not an object -> BadConfig.

    The decoder's message only carries a position, never the (possibly secret) text.
    """
    text = _str(cfg, key)
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        pos = getattr(exc, "pos", None)
        raise BadConfig(f"{key} is not valid JSON (at character {pos})") from None
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadConfig(f"{key} must be a JSON object, got {type(value).__name__}")
    return value


def _headers(cfg: Mapping[str, Any]) -> tuple[tuple[str, Secret], ...]:
    obj = _json_object(cfg, "headers_json")
    if obj is None:
        return ()
    if len(obj) > MAX_HEADERS:
        raise BadConfig(f"headers_json has {len(obj)} headers, at most {MAX_HEADERS} allowed")
    headers: list[tuple[str, Secret]] = []
    for name, value in obj.items():
        if not isinstance(value, str):
            raise BadConfig("headers_json must map header names to strings")
        if not name or any(c in name for c in ":\r\n \t") or any(c in value for c in "\r\n"):
            raise BadConfig("headers_json holds an invalid header name or value")
        headers.append((name, Secret(value)))
    return tuple(headers)


def _auth(cfg: Mapping[str, Any]) -> HealthCheckAuth | None:
    obj = _json_object(cfg, "auth_config_json")
    if obj is None:
        return None
    kind = obj.get("type")
    if kind in (None, "", "none"):
        return None
    for key in ("username", "password", "token"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise BadConfig(f"auth_config_json {key} must be a string")
    if kind == "basic":
        return HealthCheckAuth(
            kind="basic",
            username=obj.get("username") or "",
            secret=Secret(obj.get("password") or ""),
        )
    if kind == "bearer":
        return HealthCheckAuth(kind="bearer", secret=Secret(obj.get("token") or ""))
    shown = kind if isinstance(kind, str) and len(kind) <= 20 else type(kind).__name__
    raise BadConfig(f"auth_config_json type {shown!r} is not basic or bearer")


def parse_config(value: Any) -> HealthCheckConfig:
    """One ``<config>`` object (PROTOCOL §4.6) -> a validated config, or BadConfig.

    Absent or null keys take safe defaults (enabled, GET, 10 s timeout, 30 s interval, follow
    redirects, verify TLS); present keys must have the documented JSON type.
    """
    if not isinstance(value, dict):
        raise BadConfig(f"config must be an object, got {type(value).__name__}")
    container_id = _str(value, "container_id").strip()
    if not container_id:
        raise BadConfig("container_id is required")
    try:
        CONTAINER.check(container_id, "container_id")
    except BadReference as exc:  # one bad config is dropped, not the whole sync
        raise BadConfig(str(exc)) from None
    url = value.get("url")
    if not isinstance(url, str):
        raise BadConfig("url must be a string")
    if len(url) > MAX_URL_LENGTH:
        raise BadConfig(f"url is longer than {MAX_URL_LENGTH} characters")
    codes = _str(value, "expected_status_codes")
    return HealthCheckConfig(
        container_id=container_id,
        host_id=_str(value, "host_id"),
        enabled=_bool(value, "enabled", True),
        url=url.strip(),
        method=_str(value, "method").strip() or "GET",
        expected_status_codes=codes,
        status_ranges=parse_status_codes(codes),
        timeout_seconds=_int(value, "timeout_seconds", 10),
        check_interval_seconds=_int(value, "check_interval_seconds", 30),
        follow_redirects=_bool(value, "follow_redirects", True),
        verify_ssl=_bool(value, "verify_ssl", True),
        headers=_headers(value),
        auth=_auth(value),
    )


def _container_label(value: Any) -> str:
    if isinstance(value, dict) and isinstance(value.get("container_id"), str):
        return str(value["container_id"])[:64]
    return "?"


# --- frame decoders -----------------------------------------------------------------------------


def _payload(frame: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    payload = frame.get("payload")
    if not isinstance(payload, dict):
        log.warning("ignored %s: payload must be an object", kind)
        return None
    return payload


def decode_sync(frame: Mapping[str, Any]) -> SyncHealthChecks | None:
    """Shape and count only (the Connection's thread); the configs are validated by the actor."""
    payload = _payload(frame, "health_check_configs_sync")
    if payload is None:
        return None
    items = payload.get("configs")
    if items is None:
        items = []
    if not isinstance(items, list):
        log.warning("ignored health_check_configs_sync: configs must be a list")
        return None
    if len(items) > MAX_HEALTH_CHECKS:
        log.error(
            "refused health_check_configs_sync with %d configs: this agent runs at most %d health "
            "checks; the current checks stay as they are",
            len(items),
            MAX_HEALTH_CHECKS,
        )
        return None
    return SyncHealthChecks(configs=RawJson.of(items), count=len(items))


def decode_config(frame: Mapping[str, Any]) -> SetHealthCheck | None:
    payload = _payload(frame, "health_check_config")
    if payload is None:
        return None
    return SetHealthCheck(config=RawJson.of(payload))


@record
class ParsedSync:
    configs: tuple[HealthCheckConfig, ...]
    #: "<container>: <reason>" for each config left out (never a credential)
    problems: tuple[str, ...]


def parse_sync(configs: RawJson) -> ParsedSync:
    """Validate a synced set (the actor's thread): linear, later duplicates win like Go's map."""
    items = configs.value()
    valid: dict[str, HealthCheckConfig] = {}
    problems: list[str] = []
    for item in items if isinstance(items, list) else ():
        try:
            config = parse_config(item)
        except BadConfig as exc:
            problems.append(f"{_container_label(item)}: {exc}")
            continue
        valid[config.container_id] = config
    return ParsedSync(configs=tuple(valid.values()), problems=tuple(problems))


def parse_one(config: RawJson) -> HealthCheckConfig:
    """Validate one ``health_check_config``; BadConfig names the container and the reason."""
    value = config.value()
    try:
        return parse_config(value)
    except BadConfig as exc:
        raise BadConfig(f"{_container_label(value)}: {exc}") from None


def decode_remove(frame: Mapping[str, Any]) -> RemoveHealthCheck | None:
    payload = _payload(frame, "health_check_config_remove")
    if payload is None:
        return None
    container_id = payload.get("container_id")
    if not isinstance(container_id, str) or not container_id.strip():
        log.warning("ignored health_check_config_remove: container_id must be a string")
        return None
    return RemoveHealthCheck(container_id=container_id.strip())


#: generic ``command`` names this family decodes
GENERIC_DECODERS: dict[str, CommandDecoder] = {}
#: top-level frame ``type``s this family decodes (frame -> typed message or None to ignore)
FRAME_DECODERS: dict[str, Any] = {
    "health_check_configs_sync": decode_sync,
    "health_check_config": decode_config,
    "health_check_config_remove": decode_remove,
}
#: which actor role runs each command type
ROUTES: dict[type, Role] = {
    SyncHealthChecks: Role.HEALTH_CHECKS,
    SetHealthCheck: Role.HEALTH_CHECKS,
    RemoveHealthCheck: Role.HEALTH_CHECKS,
}
