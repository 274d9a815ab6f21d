"""A strict, thread-based fake of the DockMon backend's agent endpoint (the server half).

`FakeHub` speaks the wire protocol of ``/work/shared/protocol/PROTOCOL.md`` on 127.0.0.1 and is
deliberately *as strict as the real backend* (stricter where the spec says the Go agent never does
something), so that an agent passing against it is byte-compatible with DockMon:

* §1    one WebSocket endpoint, ``/api/agent/ws`` (anything else: HTTP 404), 16 MiB message cap
        (close 1009), server pings every 20 s with a 20 s pong timeout.
* §2    ``register`` validated like the Pydantic model ``AgentRegistrationRequest``
        (``extra='forbid'``, exact types, caps, regexes), then the §2.3 decision order with the
        backend's short error strings; ``auth_success`` / ``auth_error`` + close 1008;
        supersede an older socket of the same agent with close 1000.
* §3    routing of everything the agent sends in §3.4 order, response classification of §3.5,
        per-agent circuit breaker (optional).
* §1.3  binary frames, invalid JSON and non-object JSON close the socket with 1011.

Everything the agent does wrong is appended to :attr:`FakeHub.violations`; tests finish with
:meth:`FakeHub.assert_clean`.

Threading: the websockets sync server runs one handler thread per connection; every piece of
shared state is guarded by one :class:`threading.Condition` (``_cond``), and every wait is a
``Condition.wait_for`` with a timeout. Network I/O never happens while ``_cond`` is held.
"""

from __future__ import annotations

import contextlib
import enum
import http
import ipaddress
import json
import logging
import re
import socket
import ssl
import struct
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import TracebackType
from typing import Any, ClassVar, cast
from urllib.parse import parse_qs

from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request
from websockets.http11 import Response as HttpResponse
from websockets.protocol import State
from websockets.sync.server import Server, ServerConnection, ServerProtocol, serve

from tests.support.hub_events import EVENT_VALIDATORS

__all__ = [
    "AGENT_WS_PATH",
    "MAX_MESSAGE_SIZE",
    "NOT_GIVEN",
    "AgentRecord",
    "AuthAttempt",
    "FakeHub",
    "Response",
    "classify_response",
    "validate_registration",
]

log = logging.getLogger(__name__)

AGENT_WS_PATH = "/api/agent/ws"
INGEST_WS_PATH = "/api/stats/ws/ingest"  # stats-service ingest (§1.5)
INGEST_MAX_MESSAGE = 16 * 1024  # the stats service's per-message cap
MAX_MESSAGE_SIZE = 16 * 1024 * 1024  # uvicorn's default --ws-max-size (§1.3)
CLOSE_TIMEOUT = 5.0  # how long a hub-initiated close waits for the agent's echo
STOP_GRACE = 1.0  # stop(): budget for graceful 1001 closes before connections are aborted
JOIN_TIMEOUT = 5.0

AUTH_FAILED_REASON = "Authentication failed"
INTERNAL_ERROR_REASON = "Internal error"
SUPERSEDED_REASON = "New connection established"
CIRCUIT_OPEN_ERROR = "circuit breaker open"
INVALID_RESPONSE_ERROR = "Invalid response: missing 'success' or 'payload' field"

# Circuit breaker (§3.5, §13)
BREAKER_FAILURES = 5
BREAKER_WINDOW_S = 60.0
BREAKER_OPEN_S = 30.0
BREAKER_CLOSE_SUCCESSES = 2

KNOWN_EVENT_COMMANDS = frozenset(
    {
        "container_event",
        "container_stats",
        "health_check_result",
        "update_progress",
        "update_layer_progress",
        "update_complete",
        "selfupdate_progress",
        "deploy_progress",
        "deploy_complete",
        "shell_data",
    }
)
ENVELOPE_KEYS = frozenset({"type", "id", "command", "payload", "error", "error_type", "timestamp"})
ERROR_TYPES = frozenset({"permission_denied", "docker_error", "invalid_response"})
CONTAINER_EVENT_KEYS = frozenset(
    {"container_id", "container_name", "image", "action", "timestamp", "attributes"}
)
HOST_STATS_KEYS = frozenset({"cpu_percent", "mem_percent", "net_bytes_per_sec"})

_UTC_TIMESTAMP_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?Z")
_RFC3339_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})")
_FULL_CONTAINER_ID_RE = re.compile(r"[0-9a-f]{64}")
_ID12 = re.compile(r"[0-9a-f]{12}")


class _NotGiven(enum.Enum):
    NOT_GIVEN = "NOT_GIVEN"

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN = _NotGiven.NOT_GIVEN
"""Sentinel: ``send_command(name)`` omits the ``payload`` key entirely (e.g. list_containers)."""


# --------------------------------------------------------------------------------------------
# Public value types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    """A command result, classified exactly like ``AgentCommandExecutor`` (§3.5)."""

    ok: bool
    data: Any
    error: str | None
    error_type: str | None
    raw: dict[str, Any]


@dataclass(frozen=True)
class AgentRecord:
    """One row of the fake ``agents`` table (joined with its host)."""

    agent_id: str
    host_id: str
    engine_id: str
    hostname: str
    version: str | None
    capabilities: dict[str, bool]
    register: dict[str, Any] | None  # the last register frame that authenticated it
    #: the host's addresses as the backend keeps them: host_ips without non-IP entries
    host_ips: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuthAttempt:
    token: str | None
    ok: bool
    error: str | None
    agent_id: str | None


def classify_response(msg: Mapping[str, Any]) -> Response:
    """Classify an agent reply like ``_execute_command_once`` does (§3.5)."""
    raw = dict(msg)
    error = msg.get("error")
    error_type = msg.get("error_type")
    etype = error_type if isinstance(error_type, str) else None
    if error:
        text = error if isinstance(error, str) else str(error)
        return Response(ok=False, data=None, error=text, error_type=etype, raw=raw)
    if "success" not in msg and "payload" not in msg:
        return Response(ok=False, data=None, error=INVALID_RESPONSE_ERROR, error_type=None, raw=raw)
    if "payload" in msg:
        data = msg["payload"]
    elif "data" in msg:
        data = msg["data"]
    else:
        data = raw
    return Response(ok=True, data=data, error=None, error_type=None, raw=raw)


# --------------------------------------------------------------------------------------------
# Registration schema (Pydantic AgentRegistrationRequest, extra='forbid')
# --------------------------------------------------------------------------------------------

_Loc = tuple[str | int, ...]
_Check = Callable[[Any], tuple[_Loc, str] | None]

_ID_RE = re.compile(r"[A-Za-z0-9_:-]+")
_ID_ERROR = (
    "Value error, ID must contain only alphanumeric characters, hyphens, underscores, and colons"
)
HOSTNAME_SOURCES = ("agent_name", "daemon", "os", "engine_id")


def _str(
    max_len: int | None = None, *, id_regex: bool = False, pattern: str | None = None
) -> _Check:
    def check(value: Any) -> tuple[_Loc, str] | None:
        if not isinstance(value, str):
            return (), "Input should be a valid string"
        if max_len is not None and len(value) > max_len:
            return (), f"String should have at most {max_len} characters"
        if pattern is not None and re.search(pattern, value) is None:
            return (), f"String should match pattern '{pattern}'"
        # Stricter than upstream's re.match(...$), which lets a trailing "\n" through.
        if id_regex and _ID_RE.fullmatch(value) is None:
            return (), _ID_ERROR
        return None

    return check


def _int(gt: int, le: int) -> _Check:
    def check(value: Any) -> tuple[_Loc, str] | None:
        # Stricter than Pydantic's lax mode: bools, floats and numeric strings are all refused.
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and not value.is_integer():
                return (), "Input should be a valid integer, got a number with a fractional part"
            return (), "Input should be a valid integer"
        if value <= gt:
            return (), f"Input should be greater than {gt}"
        if value > le:
            return (), f"Input should be less than or equal to {le}"
        return None

    return check


def _bool(value: Any) -> tuple[_Loc, str] | None:
    if not isinstance(value, bool):
        return (), "Input should be a valid boolean"
    return None


def _capabilities(value: Any) -> tuple[_Loc, str] | None:
    if not isinstance(value, dict):
        return (), "Input should be a valid dictionary"
    for key, flag in value.items():
        if not isinstance(flag, bool):
            return (key,), "Input should be a valid boolean"
    return None


def _hostname_source(value: Any) -> tuple[_Loc, str] | None:
    if not isinstance(value, str) or value not in HOSTNAME_SOURCES:
        return (), "Input should be 'agent_name', 'daemon', 'os' or 'engine_id'"
    return None


def clean_host_ips(value: Any) -> tuple[str, ...]:
    """What the backend keeps of a valid ``host_ips``: the entries that are IP addresses."""
    kept = []
    for item in value if isinstance(value, list) else []:
        try:
            kept.append(str(ipaddress.ip_address(item.strip())))
        except ValueError:
            continue  # non-IP entries are silently dropped (PROTOCOL §2.2)
    return tuple(kept)


def _host_ips(value: Any) -> tuple[_Loc, str] | None:
    if not isinstance(value, list):
        return (), "Input should be a valid list"
    for index, item in enumerate(value):
        if not isinstance(item, str):
            return (index,), "Input should be a valid string"
    if len(value) > 50:
        return (), f"List should have at most 50 items after validation, not {len(value)}"
    return None


# (name, required, check) in the model's field order: Pydantic reports field errors in that
# order, then unknown keys; the backend quotes only the first error.
_REGISTER_FIELDS: tuple[tuple[str, bool, _Check], ...] = (
    ("type", True, _str(pattern="^register$")),
    ("token", True, _str(255, id_regex=True)),
    ("engine_id", True, _str(255, id_regex=True)),
    ("version", True, _str(50)),
    ("proto_version", True, _str(20)),
    ("capabilities", True, _capabilities),
    ("hostname", False, _str(255)),
    ("hostname_source", False, _hostname_source),
    ("force_unique_registration", False, _bool),
    ("os_type", False, _str(50)),
    ("os_version", False, _str(500)),
    ("kernel_version", False, _str(255)),
    ("docker_version", False, _str(50)),
    ("daemon_started_at", False, _str(100)),
    ("total_memory", False, _int(0, 10**15)),
    ("num_cpus", False, _int(0, 10000)),
    ("agent_os", False, _str(20)),
    ("agent_arch", False, _str(20)),
    ("host_ip", False, _str(45)),
    ("host_ips", False, _host_ips),
)
REGISTER_KEYS = frozenset(name for name, _, _ in _REGISTER_FIELDS)


def validate_registration(frame: Mapping[str, Any]) -> str | None:
    """Return the backend's ``auth_error`` text for a schema failure, or None when valid."""
    first: tuple[_Loc, str] | None = None
    for name, required, check in _REGISTER_FIELDS:
        if name not in frame:
            if required:
                first = ((name,), "Field required")
                break
            continue
        value = frame[name]
        if value is None and not required:
            continue  # Optional[...] accepts null
        problem = check(value)
        if problem is not None:
            first = ((name, *problem[0]), problem[1])
            break
    if first is None:
        for key in frame:
            if key not in REGISTER_KEYS:
                first = ((key,), "Extra inputs are not permitted")
                break
    if first is None:
        return None
    loc, message = first
    where = ".".join(str(part) for part in loc)
    return f"Invalid registration data: {message} (field: {where})"


def _sanitize(value: str) -> str:
    """The model's display-string sanitizer: drop < >, non-printables; trim."""
    value = re.sub(r"[<>]", "", value)
    value = "".join(c for c in value if c.isprintable() or c in "\n\r\t")
    return value.strip()


# --------------------------------------------------------------------------------------------
# Socket plumbing
# --------------------------------------------------------------------------------------------


class _Link:
    """Socket wrapper handed to websockets; it can *stall* both directions for go_silent().

    While stalled, ``recv`` blocks (so nothing is read and no pong is produced: the agent's pings
    pile up in the kernel buffer) and ``sendall``/``shutdown(SHUT_WR)`` are queued instead of
    written. ``resume`` flushes the queue in order, so the WebSocket stream stays well-formed
    (whole frames, permessage-deflate context intact). ``close`` always wakes a stalled reader.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._stalled = False
        self._closed = False
        self._backlog: list[bytes | None] = []  # None = deferred shutdown(SHUT_WR)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def stalled(self) -> bool:
        with self._cond:
            return self._stalled

    def recv(self, bufsize: int) -> bytes:
        with self._cond:
            while self._stalled and not self._closed:
                self._cond.wait()
            if self._closed:
                return b""
        return self._sock.recv(bufsize)

    def sendall(self, data: bytes) -> None:
        with self._send_lock:
            if self.stalled:
                self._backlog.append(bytes(data))
                return
            self._flush()
            self._sock.sendall(data)

    def shutdown(self, how: int) -> None:
        if how == socket.SHUT_WR:
            with self._send_lock:
                if self.stalled:
                    self._backlog.append(None)
                    return
                self._flush()
        self._sock.shutdown(how)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._stalled = False
            self._cond.notify_all()
        self._sock.close()

    def stall(self) -> None:
        with self._cond:
            self._stalled = True

    def resume(self) -> None:
        with self._cond:
            self._stalled = False
            self._cond.notify_all()
        with self._send_lock, contextlib.suppress(OSError):
            self._flush()

    def set_linger_zero(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def _flush(self) -> None:  # caller holds _send_lock
        backlog, self._backlog = self._backlog, []
        for item in backlog:
            if item is None:
                self._sock.shutdown(socket.SHUT_WR)
            else:
                self._sock.sendall(item)


_CONTAINER_EVENT = b'"container_event"'


class _HubConnection(ServerConnection):
    """ServerConnection over a `_Link`, bound to one hub through a per-hub subclass."""

    hub: ClassVar[FakeHub]

    def __init__(
        self, sock: socket.socket, protocol: ServerProtocol, server: Server, **kwargs: Any
    ) -> None:
        self.link = _Link(sock)
        #: each container event the WebSocket layer read: [(container id, action), when the
        #: pong to the ping after it went out (None: no ping yet)], processed or not
        self.reads: list[list[Any]] = []
        self.ended_at: float | None = None  # when the hub began closing it, or saw it end
        self.hub._count_connection()
        super().__init__(cast(socket.socket, self.link), protocol, server, **kwargs)

    def process_event(self, event: Any) -> None:
        """Note the container events read and when their ping was answered (the WebSocket
        layer sends the pong before it passes the ping here), whether or not the handler
        processes them later."""
        # only a frame that can be a container event is decoded here (the handler decodes each
        # frame again): decoding every frame twice doubled the hub's cost for a large reply
        if (
            isinstance(event, Frame)
            and event.opcode is Opcode.TEXT
            and _CONTAINER_EVENT in event.data
        ):
            with contextlib.suppress(ValueError, AttributeError, KeyError, TypeError):
                msg = json.loads(bytes(event.data))
                if msg.get("command") == "container_event":
                    key = (msg["payload"]["container_id"], msg["payload"]["action"])
                    with self.hub._cond:
                        self.reads.append([key, None])
        elif isinstance(event, Frame) and event.opcode is Opcode.PING:
            with self.hub._cond:
                now = time.monotonic()
                for read in reversed(self.reads):
                    if read[1] is not None:
                        break
                    read[1] = now
                self.hub._cond.notify_all()
        super().process_event(event)

    def keepalive(self) -> None:
        """websockets' keepalive loop, except that it neither pings nor times out while silent."""
        assert self.ping_interval is not None
        try:
            while True:
                self.recv_events_thread.join(self.ping_interval - self.latency)
                if not self.recv_events_thread.is_alive():
                    break
                if self.link.stalled:
                    continue
                try:
                    pong_received = self.ping(ack_on_close=True)
                except ConnectionClosed:
                    break
                if self.ping_timeout is not None and not pong_received.wait(self.ping_timeout):
                    if self.link.stalled:
                        continue
                    with self.send_context():
                        self.protocol.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                    break
        except Exception:
            self.logger.debug("keepalive ended", exc_info=True)

    def abort(self) -> None:
        """Kill the TCP connection without a close frame (RST)."""
        self.link.set_linger_zero()
        self.close_socket()


@dataclass(eq=False)
class _Session:
    sid: int
    conn: _HubConnection
    agent_id: str | None = None
    auth_seq: int = 0  # >0 once authenticated; orders "the latest" session
    close_recorded: bool = False
    closing: bool = False  # we sent Close: like the backend, stop processing its frames


@dataclass
class _RegToken:
    token: str
    expired: bool
    max_uses: int | None
    use_count: int = 0


@dataclass
class _Pending:
    request_id: str
    agent_id: str | None
    sent_at: float


@dataclass
class _Breaker:
    failures: deque[float] = field(default_factory=deque)
    opened_at: float | None = None
    half_open_successes: int = 0

    def is_open(self, now: float) -> bool:
        return self.opened_at is not None and now - self.opened_at < BREAKER_OPEN_S

    def record(self, ok: bool, now: float) -> None:
        if self.opened_at is not None:
            if now - self.opened_at < BREAKER_OPEN_S:
                return  # late results while open don't count
            if not ok:  # half-open probe failed
                self.opened_at = now
                self.half_open_successes = 0
                return
            self.half_open_successes += 1
            if self.half_open_successes >= BREAKER_CLOSE_SUCCESSES:
                self.opened_at = None
                self.half_open_successes = 0
                self.failures.clear()
            return
        if ok:
            return
        self.failures.append(now)
        while self.failures and now - self.failures[0] > BREAKER_WINDOW_S:
            self.failures.popleft()
        if len(self.failures) >= BREAKER_FAILURES:
            self.opened_at = now
            self.failures.clear()


def _excerpt(msg: Any, limit: int = 300) -> str:
    try:
        text = json.dumps(msg, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(msg)
    return text if len(text) <= limit else text[:limit] + "…"


def _is_utc_timestamp(value: Any) -> bool:
    return (
        isinstance(value, str)
        and _UTC_TIMESTAMP_RE.fullmatch(value) is not None
        and _valid_datetime(value)
    )


def _is_rfc3339(value: Any) -> bool:
    return (
        isinstance(value, str)
        and _RFC3339_RE.fullmatch(value) is not None
        and _valid_datetime(value)
    )


def _valid_datetime(value: str) -> bool:
    try:
        datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return False
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------
# The hub
# --------------------------------------------------------------------------------------------


class FakeHub:
    """The server half of the DockMon agent protocol, for tests. See the module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        auth_timeout: float = 30.0,
        circuit_breaker: bool = False,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        max_size: int = MAX_MESSAGE_SIZE,
        clock: Callable[[], float] = time.monotonic,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self._ssl = ssl_context
        self.port = port
        self._auth_timeout = auth_timeout
        self._breaker_enabled = circuit_breaker
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._max_size = max_size
        self._clock = clock

        self._cond = threading.Condition()
        self._server: Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._helpers: list[threading.Thread] = []
        self._stopped = False

        # --- everything below is guarded by _cond ---
        self._sessions: dict[int, _Session] = {}
        self._next_sid = 0
        self._active: dict[str, _Session] = {}  # agent_id -> registered socket (§2.5)
        self._auth_seq = 0
        self._connection_count = 0
        self._refusing = False
        self._agents: dict[str, AgentRecord] = {}
        self._reg_tokens: dict[str, _RegToken] = {}
        self._registrations: list[dict[str, Any]] = []
        self._auth_log: list[AuthAttempt] = []
        self._auth_successes = 0
        self._last_authed_agent: str | None = None
        self._events: list[dict[str, Any]] = []
        self._event_times: list[int] = []  # wall-clock ns when each event arrived
        self._host_stats: list[dict[str, Any]] = []
        self._host_stats_session: list[int] = []  # auth number of the session each came on
        self._routing_session = 0
        self._ingest_samples: list[dict[str, Any]] = []  # §1.5, each message whole
        self._ingest_rejected = 0  # ingest upgrades refused with HTTP 401
        self._ingest_accepted = 0  # ingest sockets opened, in total
        self._ingest_conns: set[_HubConnection] = set()
        self._violations: list[str] = []
        self._errors: list[str] = []
        self._unmatched: list[dict[str, Any]] = []
        self._agent_conns: list[_HubConnection] = []  # every agent socket, ended ones too
        self._handler_paused = False
        self._closes_sent: list[tuple[int, str]] = []
        self._sent: list[dict[str, Any]] = []
        self._pending: dict[str, _Pending] = {}
        self._responses: dict[str, Response] = {}
        self._breakers: dict[str, _Breaker] = {}
        self._health_checks: dict[str | None, list[dict[str, Any]]] = {}  # agent_id/None -> configs
        #: deployment id -> the session its deploy_complete arrived on
        self._deploys_done: dict[str, int] = {}
        #: deployment id -> (command, payload) received for it -> the last session it came on
        self._deploy_messages: dict[str, dict[tuple[str, str], int]] = {}

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> FakeHub:
        if self._server is not None:
            return self
        conn_cls = cast(
            type[_HubConnection], type("BoundHubConnection", (_HubConnection,), {"hub": self})
        )
        server = serve(
            self._handler,
            self.host,
            self.port,
            process_request=self._process_request,
            server_header="uvicorn",
            ping_interval=self._ping_interval,
            ping_timeout=self._ping_timeout,
            close_timeout=CLOSE_TIMEOUT,
            max_size=self._max_size,
            create_connection=conn_cls,
            ssl=self._ssl,
        )
        self._server = server
        self.port = server.socket.getsockname()[1]
        self._serve_thread = threading.Thread(
            target=server.serve_forever, name=f"FakeHub-{self.port}", daemon=True
        )
        self._serve_thread.start()
        return self

    def stop(self) -> None:
        """Close every connection (1001, then abort), stop listening, join threads (bounded)."""
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            self._handler_paused = False
            self._cond.notify_all()
            server = self._server
            sessions = list(self._sessions.values())
        if server is None:
            return
        closers = []
        for session in sessions:
            if session.conn.link.stalled:
                session.conn.abort()
            else:
                closers.append(
                    self._spawn(self._close_session, session, CloseCode.GOING_AWAY, "going away")
                )
        deadline = time.monotonic() + STOP_GRACE
        for thread in closers:
            thread.join(max(0.0, deadline - time.monotonic()))
        for session in sessions:
            if session.conn.state is not State.CLOSED:
                session.conn.abort()
        with self._cond:
            ingest = list(self._ingest_conns)
        for conn in ingest:
            conn.abort()
        shutdown = threading.Thread(target=server.shutdown, name="FakeHub-shutdown", daemon=True)
        shutdown.start()
        shutdown.join(JOIN_TIMEOUT)
        if self._serve_thread is not None:
            self._serve_thread.join(JOIN_TIMEOUT)
        with self._cond:
            helpers = list(self._helpers)
        for thread in helpers:
            thread.join(JOIN_TIMEOUT)
        if shutdown.is_alive():
            log.warning("FakeHub: server shutdown did not finish within %ss", JOIN_TIMEOUT)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """What the agent's DOCKMON_URL is set to."""
        return f"{'https' if self._ssl else 'http'}://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self._ssl else 'ws'}://{self.host}:{self.port}{AGENT_WS_PATH}"

    # ---------------------------------------------------------------- fixtures / state setup

    def add_registration_token(
        self,
        token: str,
        *,
        multi_use: bool = False,
        expired: bool = False,
        max_uses: int | None = None,
    ) -> None:
        """Single use by default; ``multi_use`` means unlimited unless ``max_uses`` is given."""
        uses = max_uses if max_uses is not None else (None if multi_use else 1)
        with self._cond:
            self._reg_tokens[token] = _RegToken(token=token, expired=expired, max_uses=uses)

    def add_agent(self, *, agent_id: str, engine_id: str, hostname: str = "pre-existing") -> None:
        """A pre-registered agent; its permanent token is ``agent_id``."""
        with self._cond:
            self._agents[agent_id] = AgentRecord(
                agent_id=agent_id,
                host_id=str(uuid.uuid4()),
                engine_id=engine_id,
                hostname=hostname,
                version=None,
                capabilities={},
                register=None,
            )

    def forget_agent(self, agent_id: str) -> None:
        """Delete the agent like a user deleting the host: the socket stays open (§2.6)."""
        with self._cond:
            self._agents.pop(agent_id, None)

    def set_health_checks(self, agent_id: str | None, configs: list[dict[str, Any]]) -> None:
        """HTTP health checks with ``check_from='agent'`` for ``agent_id`` (None: any agent
        without its own list). After each ``auth_success`` the hub sends one
        ``health_check_configs_sync`` with them when non-empty (§2.5 item 2); a config without
        ``host_id`` gets the agent's. Individual changes: ``send_raw`` a
        ``health_check_config`` / ``health_check_config_remove`` frame.
        """
        with self._cond:
            self._health_checks[agent_id] = [dict(c) for c in configs]

    # ---------------------------------------------------------------- observations

    @property
    def agents(self) -> dict[str, AgentRecord]:
        with self._cond:
            return dict(self._agents)

    @property
    def registrations(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._registrations)

    @property
    def auth_log(self) -> list[AuthAttempt]:
        with self._cond:
            return list(self._auth_log)

    @property
    def events(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._events)

    def events_with_arrival(self) -> list[tuple[int, dict[str, Any]]]:
        """(arrival time in wall-clock ns, event) pairs, for latency measurements."""
        with self._cond:
            return list(zip(self._event_times, self._events, strict=True))

    @property
    def ingest_samples(self) -> list[dict[str, Any]]:
        """Every message received on the stats ingest socket (§1.5), in order."""
        with self._cond:
            return list(self._ingest_samples)

    @property
    def ingest_rejected(self) -> int:
        """How many ingest upgrades were refused with HTTP 401 (unknown token)."""
        with self._cond:
            return self._ingest_rejected

    @property
    def ingest_connected(self) -> int:
        """Ingest sockets open now."""
        with self._cond:
            return len(self._ingest_conns)

    @property
    def ingest_accepted(self) -> int:
        """Ingest sockets opened since the hub started."""
        with self._cond:
            return self._ingest_accepted

    def wait_ingest(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 15
    ) -> list[dict[str, Any]]:
        """Block until ``predicate(ingest samples so far)``; return those samples."""
        self.wait_until(lambda: predicate(self._ingest_samples), timeout, "ingest samples")
        return self.ingest_samples

    def drop_ingest(self) -> None:
        """Close every stats ingest socket (1001) without waiting for the handshake."""
        with self._cond:
            conns = list(self._ingest_conns)
        for conn in conns:
            self._spawn(conn.close, CloseCode.GOING_AWAY, "going away")

    @property
    def host_stats(self) -> list[dict[str, Any]]:
        """Every raw ``{"type":"stats","stats":{…}}`` message, whole."""
        with self._cond:
            return list(self._host_stats)

    def host_stats_of_session(self, auth_number: int) -> list[dict[str, Any]]:
        """Host stats received on the session of the ``auth_number``-th successful auth."""
        with self._cond:
            return [
                m
                for m, n in zip(self._host_stats, self._host_stats_session, strict=True)
                if n == auth_number
            ]

    @property
    def violations(self) -> list[str]:
        with self._cond:
            return list(self._violations)

    @property
    def errors(self) -> list[str]:
        """Internal hub errors (bugs in the fake, not the agent); assert_clean reports them too."""
        with self._cond:
            return list(self._errors)

    @property
    def unmatched_responses(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._unmatched)

    @property
    def closes_sent(self) -> list[tuple[int, str]]:
        """Close frames the hub initiated (echoes of the agent's own close are not listed)."""
        with self._cond:
            return list(self._closes_sent)

    @property
    def sent(self) -> list[dict[str, Any]]:
        """Every JSON object the hub sent (auth replies, commands), in order."""
        with self._cond:
            return list(self._sent)

    @property
    def connection_count(self) -> int:
        with self._cond:
            return self._connection_count

    @property
    def connected(self) -> bool:
        with self._cond:
            return bool(self._active)

    @property
    def silent(self) -> bool:
        with self._cond:
            sessions = list(self._sessions.values())
        return any(s.conn.link.stalled for s in sessions)

    def container_events(self) -> list[dict[str, Any]]:
        with self._cond:
            return [
                e["payload"]
                for e in self._events
                if e.get("command") == "container_event" and isinstance(e.get("payload"), dict)
            ]

    def circuit_open(self, agent_id: str | None = None) -> bool:
        with self._cond:
            target = agent_id or self._last_authed_agent
            breaker = self._breakers.get(target) if target else None
            return breaker is not None and breaker.is_open(self._clock())

    # ---------------------------------------------------------------- waiting

    def wait_until(
        self, predicate: Callable[[], bool], timeout: float = 15, what: str = "condition"
    ) -> None:
        """Block until ``predicate()`` (evaluated under the hub lock) is true."""
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise TimeoutError(f"FakeHub: timed out after {timeout}s waiting for {what}")

    def wait_registered(self, count: int = 1, timeout: float = 15) -> AgentRecord:
        """Block until ``count`` successful auths happened in total; return the latest agent."""
        self.wait_until(
            lambda: self._auth_successes >= count, timeout, f"{count} successful registration(s)"
        )
        with self._cond:
            assert self._last_authed_agent is not None
            return self._agents[self._last_authed_agent]

    def wait_disconnected(self, timeout: float = 15) -> None:
        self.wait_until(lambda: not self._active, timeout, "the agent to disconnect")

    def wait_connections(self, count: int, timeout: float = 15) -> None:
        self.wait_until(
            lambda: self._connection_count >= count, timeout, f"{count} TCP connection(s)"
        )

    def wait_event(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15, *, start: int = 0
    ) -> dict[str, Any]:
        """First event (from index ``start``) matching ``predicate``.

        A predicate raising KeyError/TypeError/IndexError counts as "no match", so
        ``lambda e: e["payload"]["action"] == "die"`` is safe on other events.
        """
        found: list[dict[str, Any]] = []

        def matches() -> bool:
            for event in self._events[start:]:
                try:
                    hit = predicate(event)
                except (KeyError, TypeError, IndexError):
                    hit = False
                if hit:
                    found.append(event)
                    return True
            return False

        self.wait_until(matches, timeout, "a matching event")
        return found[0]

    # ---------------------------------------------------------------- commands

    def send_command(self, command: str, payload: Any = NOT_GIVEN) -> str:
        request_id = str(uuid.uuid4())
        msg: dict[str, Any] = {"type": "command", "command": command}
        if payload is not NOT_GIVEN:
            msg["payload"] = payload
        msg["id"] = request_id
        msg["correlation_id"] = request_id
        self._send_request(request_id, msg)
        return request_id

    def send_container_operation(
        self, action: str, container_id: str | None = None, **extra: Any
    ) -> str:
        """``container_id=None`` omits the key (the backend always sends it)."""
        request_id = str(uuid.uuid4())
        payload: dict[str, Any] = {"action": action}
        if container_id is not None:
            payload["container_id"] = container_id
        payload.update(extra)
        msg = {
            "type": "container_operation",
            "payload": payload,
            "id": request_id,
            "correlation_id": request_id,
        }
        self._send_request(request_id, msg)
        return request_id

    def send_raw(self, data: str | bytes) -> None:
        """Send an arbitrary frame (str: TEXT, bytes: BINARY) to the active agent session.

        If ``data`` is a JSON object carrying a string ``correlation_id`` (or ``id``), that id is
        registered as pending, so :meth:`wait_response` works for hand-made requests.
        """
        with self._cond:
            session = self._active_session()
            request_id = self._raw_request_id(data)
            if request_id is not None:
                self._pending[request_id] = _Pending(request_id, session.agent_id, self._clock())
        try:
            session.conn.send(data)
        except ConnectionClosed as exc:
            with self._cond:
                if request_id is not None:
                    self._pending.pop(request_id, None)
            raise ConnectionError(f"FakeHub: agent connection closed: {exc}") from exc

    def wait_response(self, request_id: str, timeout: float = 30) -> Response:
        """Wait for the reply; on timeout the request is dropped (late replies become unmatched)."""
        with self._cond:
            if request_id not in self._responses and request_id not in self._pending:
                raise KeyError(f"FakeHub: unknown or expired request id {request_id}")
            if not self._cond.wait_for(lambda: request_id in self._responses, timeout):
                pending = self._pending.pop(request_id, None)
                if pending is not None:
                    self._record_result(pending.agent_id, ok=False)
                self._cond.notify_all()
                raise TimeoutError(
                    f"FakeHub: no response to request {request_id} within {timeout}s"
                )
            return self._responses.pop(request_id)

    def command(self, command: str, payload: Any = NOT_GIVEN, *, timeout: float = 30) -> Response:
        blocked = self._breaker_blocked()
        if blocked is not None:
            return blocked
        return self.wait_response(self.send_command(command, payload), timeout)

    def container_op(
        self, action: str, container_id: str | None = None, *, timeout: float = 30, **extra: Any
    ) -> Response:
        """Send + wait. ``timeout`` is the *wait*; it never reaches the payload. For a payload
        ``timeout`` (stop/restart) use ``wait_response(send_container_operation(..., timeout=N))``.
        """
        blocked = self._breaker_blocked()
        if blocked is not None:
            return blocked
        return self.wait_response(
            self.send_container_operation(action, container_id, **extra), timeout
        )

    # ---------------------------------------------------------------- deployments (§8.1)

    def send_deploy(
        self,
        project_name: str,
        compose_content: str,
        *,
        deployment_id: str | None = None,
        **fields: Any,
    ) -> tuple[str, str]:
        """Send ``deploy_compose`` with every key the current backend sends (defaults below,
        overridden by ``fields``); returns (request id, deployment id)."""
        deployment_id = deployment_id or str(uuid.uuid4())
        payload: dict[str, Any] = {
            "deployment_id": deployment_id,
            "project_name": project_name,
            "compose_content": compose_content,
            "env_file_content": "",
            "env_files": {},
            "action": "up",
            "remove_volumes": False,
            "profiles": [],
            "force_recreate": False,
            "pull_images": False,
            "wait_for_healthy": False,
            "health_timeout": 60,
            "registry_credentials": [],
        }
        unknown = set(fields) - set(payload)
        if unknown:
            raise TypeError(f"not a deploy_compose field: {sorted(unknown)}")
        payload.update(fields)
        return self.send_command("deploy_compose", payload), deployment_id

    def deploy(
        self, project_name: str, compose_content: str, *, timeout: float = 30, **fields: Any
    ) -> tuple[Response, str]:
        """Send ``deploy_compose`` and wait for its acknowledgement (not for the deployment)."""
        request_id, deployment_id = self.send_deploy(project_name, compose_content, **fields)
        return self.wait_response(request_id, timeout), deployment_id

    def deploy_events(self, deployment_id: str) -> list[dict[str, Any]]:
        """Every deploy_progress / deploy_complete event of ``deployment_id``, whole, in order."""
        with self._cond:
            return [
                e
                for e in self._events
                if e.get("command") in ("deploy_progress", "deploy_complete")
                and isinstance(e.get("payload"), dict)
                and e["payload"].get("deployment_id") == deployment_id
            ]

    def wait_deploy_complete(self, deployment_id: str, timeout: float = 120) -> dict[str, Any]:
        """The ``deploy_complete`` payload of ``deployment_id`` (waits for it)."""
        event = self.wait_event(
            lambda e: (
                e["command"] == "deploy_complete" and e["payload"]["deployment_id"] == deployment_id
            ),
            timeout,
        )
        return cast(dict[str, Any], event["payload"])

    # ---------------------------------------------------------------- faults

    def drop(self, code: int = 1001, reason: str = "going away") -> None:
        """Close every agent socket with a close frame and wait (bounded) for the handshake.

        A silenced connection is resumed first so that its close frame really goes out.
        """
        with self._cond:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.conn.link.resume()
        threads = [self._spawn(self._close_session, s, code, reason) for s in sessions]
        for thread in threads:
            thread.join(CLOSE_TIMEOUT + 1)

    def pause_handler(self, on: bool = True) -> None:
        """While on, the message handler processes nothing, while the WebSocket layer goes on
        reading frames (into its queue) and answering pings: a backend whose handler lags
        (a slow database write). A close meanwhile discards what it had not processed."""
        with self._cond:
            self._handler_paused = on
            self._cond.notify_all()

    def ponged_events(self) -> list[tuple[str, str]]:
        """(container id, action) of each container event whose ping the WebSocket layer
        answered, processed or not."""
        with self._cond:
            return [r[0] for c in self._agent_conns for r in c.reads if r[1] is not None]

    def resend_allowance(self, margin: float) -> Counter[tuple[str, str]]:
        """How often each container event may come again under at-least-once delivery with
        the agent's confirmation ``margin``: once per ended socket that read it with no pong
        after it, or ended less than ``margin`` (+ 0.25 s of clock slack) after that pong."""
        allowed: Counter[tuple[str, str]] = Counter()
        with self._cond:
            for conn in self._agent_conns:
                if conn.ended_at is None:
                    continue
                for key, ponged in conn.reads:
                    if ponged is None or conn.ended_at - ponged < margin + 0.25:
                        allowed[key] += 1
        return allowed

    def abort(self) -> None:
        """Kill every agent TCP connection without a close frame (RST)."""
        with self._cond:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.conn.abort()

    def refuse(self, on: bool = True) -> None:
        """While on, every WebSocket upgrade is answered with HTTP 503."""
        with self._cond:
            self._refusing = on

    def go_silent(self, on: bool = True) -> None:
        """Black-hole the connections that are open *now* (new connections are unaffected).

        While silent the hub reads nothing (so it answers no pings and processes no frames),
        sends nothing (commands and pings are queued, its own keepalive is suspended so it never
        closes the link itself), and the TCP connection stays up. ``go_silent(False)`` resumes
        every silenced connection: queued frames are flushed and buffered input is processed
        (an agent that meanwhile closed its end is then seen as disconnected). A reconnecting
        agent gets a normal new session, which supersedes the silent one (that one is aborted).
        """
        with self._cond:
            sessions = list(self._sessions.values())
        for session in sessions:
            if on:
                session.conn.link.stall()
            else:
                session.conn.link.resume()

    def assert_clean(self) -> None:
        with self._cond:
            problems = [*self._violations, *(f"hub error: {e}" for e in self._errors)]
        if problems:
            listing = "\n".join(f"  - {p}" for p in problems)
            raise AssertionError(
                f"agent committed {len(problems)} protocol violation(s):\n{listing}"
            )

    # ================================================================ internals

    def _spawn(self, target: Callable[..., Any], *args: Any) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name="FakeHub-helper", daemon=True)
        with self._cond:
            self._helpers = [t for t in self._helpers if t.is_alive()]
            self._helpers.append(thread)
        thread.start()
        return thread

    def _count_connection(self) -> None:
        with self._cond:
            self._connection_count += 1
            self._cond.notify_all()

    def _process_request(self, conn: ServerConnection, request: Request) -> HttpResponse | None:
        path = request.path.split("?", 1)[0]
        with self._cond:
            refusing = self._refusing or self._stopped
        if refusing:
            return conn.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "Service Unavailable\n")
        if path == INGEST_WS_PATH:
            return self._ingest_auth(conn, request)
        if path != AGENT_WS_PATH:
            return conn.respond(http.HTTPStatus.NOT_FOUND, "Not Found\n")
        return None

    def _ingest_auth(self, conn: ServerConnection, request: Request) -> HttpResponse | None:
        """§1.5: ``Authorization: Bearer <permanent token>`` or ``?token=``; else HTTP 401."""
        header = request.headers.get("Authorization", "")
        token = header[len("Bearer ") :] if header.startswith("Bearer ") else None
        if token is None and "?" in request.path:
            query = parse_qs(request.path.split("?", 1)[1])
            token = query["token"][0] if query.get("token") else None
        with self._cond:
            self._connection_count -= 1  # not a control connection
            if token is not None and token in self._agents:
                return None
            self._ingest_rejected += 1
            self._cond.notify_all()
        return conn.respond(http.HTTPStatus.UNAUTHORIZED, "Unauthorized\n")

    def _ingest_loop(self, conn: _HubConnection) -> None:
        """The stats service: one JSON object per sample, agent -> server only, 16 KiB cap."""
        with self._cond:
            self._ingest_conns.add(conn)
            self._ingest_accepted += 1
            self._cond.notify_all()
        try:
            while True:
                try:
                    raw = conn.recv()
                except ConnectionClosed:
                    return
                size = len(raw.encode()) if isinstance(raw, str) else len(raw)
                if size > INGEST_MAX_MESSAGE:
                    with self._cond:
                        self._violation(f"stats ingest message of {size} bytes (cap 16 KiB)")
                    conn.close(CloseCode.MESSAGE_TOO_BIG, "message too big")
                    return
                try:
                    msg = json.loads(raw)
                except ValueError:
                    msg = None
                with self._cond:
                    validate = EVENT_VALIDATORS.get("container_stats")
                    problem = (
                        "not a JSON object"
                        if not isinstance(msg, dict)
                        else (validate(msg) if validate is not None else None)
                    )
                    if problem is not None:
                        self._violation(f"malformed stats ingest message: {problem}", raw)
                    else:
                        self._ingest_samples.append(cast(dict[str, Any], msg))
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._ingest_conns.discard(conn)
                self._cond.notify_all()

    def _violation(self, text: str, msg: Any = None) -> None:
        """Caller holds _cond."""
        entry = text if msg is None else f"{text}: {_excerpt(msg)}"
        log.warning("FakeHub violation: %s", entry)
        self._violations.append(entry)
        self._cond.notify_all()

    # ---------------------------------------------------------------- per-connection handler

    def _handler(self, connection: ServerConnection) -> None:
        conn = cast(_HubConnection, connection)
        if connection.request is not None and connection.request.path.startswith(INGEST_WS_PATH):
            self._ingest_loop(conn)
            return
        with self._cond:
            self._next_sid += 1
            session = _Session(sid=self._next_sid, conn=conn)
            self._sessions[session.sid] = session
            self._agent_conns.append(conn)
            self._cond.notify_all()
        try:
            if self._authenticate(session):
                self._message_loop(session)
        except ConnectionClosed:
            pass
        except Exception as exc:
            log.exception("FakeHub handler crashed")
            with self._cond:
                self._errors.append(f"handler crashed: {exc!r}")
            self._close_session(session, CloseCode.INTERNAL_ERROR, INTERNAL_ERROR_REASON)
        finally:
            self._end_session(session)

    def _end_session(self, session: _Session) -> None:
        protocol = session.conn.protocol
        with self._cond:
            if session.conn.ended_at is None:
                session.conn.ended_at = time.monotonic()
            self._sessions.pop(session.sid, None)
            if session.agent_id is not None and self._active.get(session.agent_id) is session:
                del self._active[session.agent_id]
            sent = protocol.close_sent
            if (
                sent is not None
                and protocol.close_rcvd_then_sent is not True
                and not session.close_recorded
                and not self._stopped  # stop() may leave leftovers to websockets' shutdown
            ):
                # Closed by the WebSocket layer itself (size limit, keepalive, bad frame).
                session.close_recorded = True
                self._closes_sent.append((int(sent.code), sent.reason))
                self._violation(
                    f"connection failed by the WebSocket layer: {int(sent.code)} {sent.reason}"
                )
            self._cond.notify_all()

    def _close_session(self, session: _Session, code: int, reason: str) -> None:
        with self._cond:
            session.closing = True
            if session.conn.ended_at is None:
                session.conn.ended_at = time.monotonic()
            if not session.close_recorded and session.conn.state is State.OPEN:
                session.close_recorded = True
                self._closes_sent.append((int(code), reason))
            # Like the backend, stop routing to a socket as soon as we decide to close it.
            if session.agent_id is not None and self._active.get(session.agent_id) is session:
                del self._active[session.agent_id]
                self._cond.notify_all()
        try:
            session.conn.close(code, reason)
        except Exception:  # never let a close failure escape into a test
            log.debug("close failed", exc_info=True)

    def _send_json(self, session: _Session, obj: dict[str, Any]) -> None:
        # Starlette's send_json encoding.
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        with self._cond:
            self._sent.append(obj)
        session.conn.send(text)

    def _decode(self, raw: str | bytes) -> dict[str, Any] | None:
        """receive_json(): None (after recording a violation) when the backend would raise."""
        problem: str | None = None
        msg: Any = None
        if isinstance(raw, bytes):
            problem = f"binary frame ({len(raw)} bytes); the backend closes with 1011"
        else:
            try:
                msg = json.loads(raw)
            except ValueError:
                problem = f"invalid JSON; the backend closes with 1011: {raw[:200]!r}"
            else:
                if not isinstance(msg, dict):
                    problem = (
                        "top-level JSON is not an object; the backend closes with 1011: "
                        + _excerpt(msg)
                    )
        if problem is not None:
            with self._cond:
                self._violation(problem)
            return None
        return cast(dict[str, Any], msg)

    # ---------------------------------------------------------------- auth (§2)

    def _authenticate(self, session: _Session) -> bool:
        conn = session.conn
        try:
            raw = conn.recv(timeout=self._auth_timeout)
        except TimeoutError:
            self._reject(session, None, "Authentication timeout")
            return False
        msg = self._decode(raw)
        if msg is None:
            self._close_session(session, CloseCode.INTERNAL_ERROR, INTERNAL_ERROR_REASON)
            return False
        token = msg.get("token") if isinstance(msg.get("token"), str) else None
        msg_type = msg.get("type")
        if msg_type != "register":
            with self._cond:
                self._violation("first frame is not a register message", msg)
            self._reject(session, token, f"Invalid authentication type: {msg_type}")
            return False
        with self._cond:
            self._registrations.append(msg)
            record: AgentRecord | None = None
            error = validate_registration(msg)
            if error is not None:
                self._violation(f"register rejected by the schema ({error})", msg)
            else:
                record, error = self._decide(msg)
        if record is None:
            assert error is not None
            self._reject(session, token, error)
            return False
        self._send_json(
            session,
            {
                "type": "auth_success",
                "agent_id": record.agent_id,
                "host_id": record.host_id,
                "permanent_token": record.agent_id,
            },
        )
        with self._cond:
            self._auth_seq += 1
            session.agent_id = record.agent_id
            session.auth_seq = self._auth_seq
            older = self._active.get(record.agent_id)
            self._active[record.agent_id] = session
            self._auth_log.append(AuthAttempt(token, True, None, record.agent_id))
            self._auth_successes += 1
            self._last_authed_agent = record.agent_id
            self._cond.notify_all()
            checks = self._health_checks.get(record.agent_id, self._health_checks.get(None, []))
            checks = [{"host_id": record.host_id, **c} for c in checks]
        if checks:
            self._send_json(
                session, {"type": "health_check_configs_sync", "payload": {"configs": checks}}
            )
        if older is not None and older is not session:
            if older.conn.link.stalled:
                older.conn.abort()  # its close frame would go into the void anyway
            else:
                self._spawn(self._close_session, older, CloseCode.NORMAL_CLOSURE, SUPERSEDED_REASON)
        return True

    def _reject(self, session: _Session, token: str | None, error: str) -> None:
        with self._cond:
            self._auth_log.append(AuthAttempt(token, False, error, None))
            self._cond.notify_all()
        with contextlib.suppress(ConnectionClosed):
            self._send_json(session, {"type": "auth_error", "error": error})
        self._close_session(session, CloseCode.POLICY_VIOLATION, AUTH_FAILED_REASON)

    def _decide(self, frame: dict[str, Any]) -> tuple[AgentRecord | None, str | None]:
        """§2.3 steps 2-8 on a schema-valid frame. Caller holds _cond."""
        token: str = frame["token"]
        engine_id: str = frame["engine_id"]
        raw_hostname = frame.get("hostname")
        hostname = _sanitize(raw_hostname) if isinstance(raw_hostname, str) else None
        capabilities = dict(frame["capabilities"])

        existing = self._agents.get(token)
        if existing is not None:  # permanent token
            if existing.engine_id != engine_id:
                return None, "Permanent token does not match engine_id"
            new_name = existing.hostname
            if hostname and hostname != existing.hostname and not self._host_name_taken(hostname):
                new_name = hostname
            record = replace(
                existing,
                hostname=new_name,
                version=frame["version"],
                capabilities=capabilities,
                register=frame,
                host_ips=clean_host_ips(frame.get("host_ips")) or existing.host_ips,
            )
            self._agents[record.agent_id] = record
            return record, None

        reg = self._reg_tokens.get(token)
        if reg is None:
            return None, "Invalid registration token"
        if reg.expired:
            return None, "Registration token has expired"
        if reg.max_uses is not None and reg.use_count >= reg.max_uses:
            return None, "Registration token has reached maximum uses"

        if frame.get("force_unique_registration") is True:
            source = frame.get("hostname_source")
            if source != "agent_name":
                return None, (
                    "FORCE_UNIQUE_REGISTRATION=true requires AGENT_NAME to be set "
                    f"(hostname_source must be 'agent_name', received '{source}')"
                )
        elif any(a.engine_id == engine_id for a in self._agents.values()):
            return None, (
                "Agent with this engine_id is already registered. If this host is a clone, "
                "regenerate /var/lib/docker/engine-id and restart Docker, or set "
                "FORCE_UNIQUE_REGISTRATION=true together with AGENT_NAME."
            )

        name = hostname or f"Agent-{engine_id[:12]}"
        if self._host_name_taken(name):
            return None, (
                f"A host named '{name}' already exists in DockMon. "
                "Set AGENT_NAME to give this agent a unique name."
            )
        agent_id = str(uuid.uuid4())
        record = AgentRecord(
            agent_id=agent_id,
            host_id=str(uuid.uuid4()),
            engine_id=engine_id,
            hostname=name,
            version=frame["version"],
            capabilities=capabilities,
            register=frame,
            host_ips=clean_host_ips(frame.get("host_ips")),
        )
        self._agents[agent_id] = record
        reg.use_count += 1
        return record, None

    def _host_name_taken(self, name: str) -> bool:
        return any(a.hostname == name for a in self._agents.values())

    # ---------------------------------------------------------------- message loop (§3.4)

    def _message_loop(self, session: _Session) -> None:
        while True:
            try:
                raw = session.conn.recv()
            except ConnectionClosed:
                return
            with self._cond:
                self._cond.wait_for(lambda: not self._handler_paused or session.closing)
                if session.closing:
                    # The backend's handler has returned once it closes the socket: a frame
                    # arriving now is never processed (Starlette stops calling receive()).
                    continue
            msg = self._decode(raw)
            if msg is None:
                self._close_session(session, CloseCode.INTERNAL_ERROR, INTERNAL_ERROR_REASON)
                return
            with self._cond:
                self._routing_session = session.auth_seq
                self._route(msg)
                self._cond.notify_all()

    def _route(self, msg: dict[str, Any]) -> None:
        """handle_agent_message, rule by rule. Caller holds _cond."""
        msg_type = msg.get("type")
        if "correlation_id" in msg or (msg_type == "response" and "id" in msg):
            self._on_response(msg)
        elif msg_type == "stats":
            self._on_host_stats(msg)
        elif msg_type in ("progress", "error"):
            self._violation(f"legacy '{msg_type}' message (the Go agent never sends it)", msg)
        elif msg_type == "heartbeat":
            self._violation("heartbeat sent (the agent must never send heartbeats, §5.9)", msg)
        elif msg_type == "event":
            self._on_event(msg)
        elif msg_type == "response":
            self._violation("response without 'id' or 'correlation_id' (unroutable)", msg)
        else:
            self._violation(f"unknown message type {msg_type!r} (backend ignores it)", msg)

    def _check_envelope(self, msg: dict[str, Any]) -> None:
        extra = sorted(set(msg) - ENVELOPE_KEYS)
        if extra:
            self._violation(f"envelope has keys outside the Go envelope {extra}", msg)
        for key in ("id", "command", "error"):
            if key in msg and not isinstance(msg[key], str):
                self._violation(f"envelope '{key}' is not a string", msg)
        if "error_type" in msg and msg["error_type"] not in ERROR_TYPES:
            self._violation(f"error_type must be one of {sorted(ERROR_TYPES)}", msg)
        if "timestamp" in msg and not _is_utc_timestamp(msg["timestamp"]):
            self._violation("envelope timestamp is not an RFC 3339 UTC time ending in Z", msg)

    def _on_response(self, msg: dict[str, Any]) -> None:
        msg_type = msg.get("type")
        if msg_type in ("event", "stats"):
            self._violation(
                f"{msg_type} message carries a top-level correlation_id "
                "(the backend routes it as a command response)",
                msg,
            )
        elif msg_type == "response":
            self._check_envelope(msg)
            if not msg.get("error") and "payload" not in msg:
                self._violation("generic response without 'payload' and without 'error'", msg)
        elif msg_type is None:  # raw container-operation reply
            success = msg.get("success")
            if "success" not in msg and not msg.get("error"):
                self._violation("raw reply without 'success' (and without 'error')", msg)
            elif "success" in msg and not isinstance(success, bool):
                self._violation("raw reply 'success' is not a boolean", msg)
            if success is False and not msg.get("error"):
                self._violation(
                    "raw reply with success:false but no 'error' (counts as success)", msg
                )
            if "data" in msg:
                self._violation("raw reply carries a 'data' key (it replaces the result)", msg)
        else:
            self._violation(f"'{msg_type}' message carries a top-level correlation_id", msg)

        request_id = msg["correlation_id"] if "correlation_id" in msg else msg["id"]
        pending = self._pending.pop(request_id, None) if isinstance(request_id, str) else None
        if pending is None:
            log.info("FakeHub: response for unknown correlation id %r", request_id)
            self._unmatched.append(msg)
            return
        result = classify_response(msg)
        self._record_result(pending.agent_id, result.ok)
        self._responses[pending.request_id] = result

    def _on_host_stats(self, msg: dict[str, Any]) -> None:
        self._host_stats.append(msg)
        self._host_stats_session.append(self._routing_session)
        extra = sorted(set(msg) - {"type", "stats"})
        if extra:
            self._violation(f"host stats message has unexpected keys {extra}", msg)
        stats = msg.get("stats")
        if not isinstance(stats, dict):
            self._violation("host stats 'stats' is not an object", msg)
        elif set(stats) != HOST_STATS_KEYS or not all(_is_number(v) for v in stats.values()):
            self._violation(f"host stats must be exactly {sorted(HOST_STATS_KEYS)} numbers", msg)

    def _on_event(self, msg: dict[str, Any]) -> None:
        self._events.append(msg)
        self._event_times.append(time.time_ns())
        self._check_envelope(msg)
        command = msg.get("command")
        if command not in KNOWN_EVENT_COMMANDS:
            self._violation(f"unknown event command {command!r} (backend ignores it)", msg)
        payload = msg.get("payload")
        if not isinstance(payload, dict):
            self._violation("event payload is not an object", msg)
            return
        validator = (
            _container_event_problem
            if command == "container_event"
            else EVENT_VALIDATORS.get(str(command))
        )
        problem = validator(payload) if validator is not None else None
        if problem is None and command == "update_complete":
            problem = self._unawaited_update(payload)
        if problem is not None:
            self._violation(f"malformed {command}: {problem}", msg)
        if command in ("deploy_progress", "deploy_complete"):
            self._deploy_sequence(str(command), payload, msg)

    def _deploy_sequence(self, command: str, payload: dict[str, Any], msg: dict[str, Any]) -> None:
        """§8.1: exactly one deploy_complete per deployment, and nothing for it afterwards,
        except a redelivery: a message already received for it, the same again, once on each
        later connection (the link ended before the agent could take it as read)."""
        deployment_id = payload.get("deployment_id")
        if not isinstance(deployment_id, str):
            return
        seen = self._deploy_messages.setdefault(deployment_id, {})
        this = (command, json.dumps(payload, sort_keys=True))
        done_on = self._deploys_done.get(deployment_id)
        if (
            done_on is not None
            and not seen.get(this, self._routing_session) < self._routing_session
        ):
            what = "a second deploy_complete" if command == "deploy_complete" else command
            self._violation(f"{what} for deployment {deployment_id} after its deploy_complete", msg)
        seen[this] = self._routing_session
        if command == "deploy_complete" and done_on is None:
            self._deploys_done[deployment_id] = self._routing_session

    def _unawaited_update(self, payload: dict[str, Any]) -> str | None:
        """The backend's update waiter (§6) matches ``old_container_id`` against the 12-char id
        it sent: an update_complete for an id no update_container named is never seen (when a
        test sent a name, the agent's answer is the container's 12-hex id, unknown here)."""
        sent = [
            m["payload"].get("container_id")
            for m in self._sent  # (caller holds _cond)
            if m.get("type") == "command"
            and m.get("command") == "update_container"
            and isinstance(m.get("payload"), dict)
        ]
        if not sent or not all(isinstance(c, str) and _ID12.fullmatch(c) for c in sent):
            return None
        if payload["old_container_id"] not in sent:
            return (
                f"old_container_id {payload['old_container_id']!r} is none of the 12-char ids "
                f"update_container was sent for {sorted(set(sent))}: the backend waits for "
                "exactly the id it sent"
            )
        return None

    # ---------------------------------------------------------------- requests / breaker

    def _active_session(self) -> _Session:
        """The most recently authenticated live session. Caller holds _cond."""
        if not self._active:
            raise RuntimeError("FakeHub: no authenticated agent session")
        return max(self._active.values(), key=lambda s: s.auth_seq)

    def _send_request(self, request_id: str, msg: dict[str, Any]) -> None:
        with self._cond:
            session = self._active_session()
            self._pending[request_id] = _Pending(request_id, session.agent_id, self._clock())
        try:
            self._send_json(session, msg)
        except ConnectionClosed as exc:
            with self._cond:
                self._pending.pop(request_id, None)
            raise ConnectionError(f"FakeHub: agent connection closed: {exc}") from exc

    @staticmethod
    def _raw_request_id(data: str | bytes) -> str | None:
        if not isinstance(data, str):
            return None
        try:
            obj = json.loads(data)
        except ValueError:
            return None
        if not isinstance(obj, dict):
            return None
        for key in ("correlation_id", "id"):
            if isinstance(obj.get(key), str):
                return cast(str, obj[key])
        return None

    def _record_result(self, agent_id: str | None, ok: bool) -> None:
        """Caller holds _cond."""
        if not self._breaker_enabled or agent_id is None:
            return
        self._breakers.setdefault(agent_id, _Breaker()).record(ok, self._clock())

    def _breaker_blocked(self) -> Response | None:
        if not self._breaker_enabled:
            return None
        with self._cond:
            session = self._active_session()
            breaker = self._breakers.get(session.agent_id or "")
            if breaker is None or not breaker.is_open(self._clock()):
                return None
        return Response(ok=False, data=None, error=CIRCUIT_OPEN_ERROR, error_type=None, raw={})


def _container_event_problem(payload: dict[str, Any]) -> str | None:
    keys = set(payload)
    if keys != CONTAINER_EVENT_KEYS:
        missing = sorted(CONTAINER_EVENT_KEYS - keys)
        extra = sorted(keys - CONTAINER_EVENT_KEYS)
        expected = sorted(CONTAINER_EVENT_KEYS)
        return f"keys must be exactly {expected} (missing {missing}, extra {extra})"
    container_id = payload["container_id"]
    if not isinstance(container_id, str) or _FULL_CONTAINER_ID_RE.fullmatch(container_id) is None:
        return "container_id must be the full 64-char lowercase hex ID"
    for key in ("container_name", "image", "action"):
        if not isinstance(payload[key], str):
            return f"{key} must be a string"
    if not payload["action"]:
        return "action must not be empty"
    if not _is_rfc3339(payload["timestamp"]):
        return "timestamp must be an RFC 3339 string"
    attributes = payload["attributes"]
    if not isinstance(attributes, dict) or not all(isinstance(v, str) for v in attributes.values()):
        return "attributes must be an object of string -> string"
    return None
