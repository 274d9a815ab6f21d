"""HealthChecks: agent-side HTTP health checks (PROTOCOL §4.6, §5.4).

The actor owns the set of configured checks and a pool of daemon worker threads that make the
HTTP requests, so a slow or hanging target never blocks the actor or another check. It only
runs checks while the control connection is up: every ``LinkStateChanged(connected=True)``
starts a new *loop* (a 1 s tick on the injected scheduler); a disconnect ends it, and a result
produced by a request that started in an older loop is discarded, like the Go agent does.

A slow target cannot starve the others:

* each check has a hard **total** deadline (``timeout_seconds``, or 10 s if <= 0) over connect,
  TLS, headers and redirects: when it passes, every socket the check opened is shut down (a
  target that trickles one byte a second never trips a per-read timeout, so the deadline is
  enforced by a watchdog, not by socket timeouts alone);
* the deadline starts when a worker picks the check up, never while it waits for one, so a
  queue behind busy workers cannot turn a healthy answer into a false timeout;
* the pool grows on demand to ``workers`` threads (64), enough for one per check on any usual
  host; a worker held up anyway (a DNS lookup cannot be interrupted) is reported by the actor's
  own deadline timer, armed when the check starts, one second after the timeout.

The configured set is validated here, on the actor's thread, not on the Connection's
(:func:`messages.health.parse_sync`), with one summary log line however many configs are bad.
A check never overlaps itself.

Pure parts, tested without threads: :class:`CheckSchedule` (what is due), :func:`classify_error`
(exception -> §5.4 error text), :func:`result_payload`, and :func:`perform_check` (the request,
tested against real local servers, slowloris ones included).
"""

from __future__ import annotations

import base64
import contextlib
import heapq
import itertools
import logging
import os
import re
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, assert_never
from urllib.parse import urlsplit

import pykka
import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.connectionpool

from actors.base import ActorContext, SupervisedActor, TimerHandle
from actors.runtime.pool import WorkerPool
from messages.common import RawJson
from messages.health import (
    BadConfig,
    CheckFinished,
    CheckOutcome,
    CheckOverdue,
    HealthCheckConfig,
    HealthTick,
    RemoveHealthCheck,
    SetHealthCheck,
    SyncHealthChecks,
    parse_one,
    parse_sync,
)
from messages.outbound import EventOut, LinkStateChanged
from messages.roles import Role
from messages.timefmt import utc_seconds

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0
DEADLINE_GRACE_SECONDS = 1.0
MAX_REDIRECTS = 10  # Go's net/http limit
DEFAULT_WORKERS = 64
#: a worker with nothing to do for this long exits (the pool shrinks back after a burst)
WORKER_IDLE_SECONDS = 30.0

Inbox = (
    LinkStateChanged
    | SyncHealthChecks
    | SetHealthCheck
    | RemoveHealthCheck
    | HealthTick
    | CheckFinished
    | CheckOverdue
)


# --- scheduling (pure) --------------------------------------------------------------------------


class CheckSchedule:
    """Which checks are configured, when each last started, and which are running now.

    ``due(now)`` returns the enabled checks that never ran in this loop or whose
    ``check_interval_seconds`` elapsed since they last *started*, and marks them running with a
    fresh run id. A running check is never due again until ``finish`` is called for that run.
    """

    def __init__(self) -> None:
        self._configs: dict[str, HealthCheckConfig] = {}
        self._last_start: dict[str, float] = {}
        self._running: dict[str, int] = {}
        self._next_run = 0

    @property
    def configs(self) -> tuple[HealthCheckConfig, ...]:
        return tuple(self._configs.values())

    def get(self, container_id: str) -> HealthCheckConfig | None:
        return self._configs.get(container_id)

    def replace_all(self, configs: tuple[HealthCheckConfig, ...]) -> None:
        self._configs = {c.container_id: c for c in configs}
        for table in (self._last_start, self._running):
            for container_id in [k for k in table if k not in self._configs]:
                del table[container_id]

    def put(self, config: HealthCheckConfig) -> None:
        self._configs[config.container_id] = config

    def remove(self, container_id: str) -> bool:
        self._last_start.pop(container_id, None)
        self._running.pop(container_id, None)
        return self._configs.pop(container_id, None) is not None

    def restart(self) -> None:
        """A new loop: every check is due at its first tick; nothing is running."""
        self._last_start.clear()
        self._running.clear()

    def due(self, now: float) -> list[tuple[HealthCheckConfig, int]]:
        started: list[tuple[HealthCheckConfig, int]] = []
        for container_id, config in self._configs.items():
            if not config.enabled or container_id in self._running:
                continue
            last = self._last_start.get(container_id)
            if last is not None and now - last < config.check_interval_seconds:
                continue
            self._next_run += 1
            self._last_start[container_id] = now
            self._running[container_id] = self._next_run
            started.append((config, self._next_run))
        return started

    def running(self, container_id: str) -> int | None:
        return self._running.get(container_id)

    def finish(self, container_id: str, run_id: int) -> bool:
        """True if ``run_id`` is the current run of that check (its result is wanted)."""
        if self._running.get(container_id) != run_id:
            return False
        del self._running[container_id]
        return True


# --- results (pure) -----------------------------------------------------------------------------


def result_payload(
    container_id: str, host_id: str, outcome: CheckOutcome, now_ns: int
) -> dict[str, Any]:
    """The ``health_check_result`` payload (§5.4): ``status_code`` omitted when 0,
    ``error_message`` omitted when empty (i.e. when healthy)."""
    payload: dict[str, Any] = {
        "container_id": container_id,
        "host_id": host_id,
        "healthy": outcome.healthy,
    }
    if outcome.status_code:
        payload["status_code"] = outcome.status_code
    payload["response_time_ms"] = outcome.response_time_ms
    if outcome.error_message:
        payload["error_message"] = outcome.error_message
    payload["timestamp"] = utc_seconds(now_ns)
    return payload


def timeout_text(seconds: int) -> str:
    return f"Timeout after {seconds}s"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps (``__cause__``, ``__context__``, urllib3 ``reason``,
    exceptions in ``args``), breadth first, each once."""
    seen: set[int] = set()
    pending = [exc]
    while pending and len(seen) < 32:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        inner = [getattr(current, "reason", None), current.__cause__, current.__context__]
        inner.extend(current.args)
        pending.extend(e for e in inner if isinstance(e, BaseException))


def _is_timeout(exc: BaseException) -> bool:
    # urllib3's NewConnectionError subclasses its TimeoutError for historical reasons
    return isinstance(exc, requests.Timeout | TimeoutError) or (
        isinstance(exc, urllib3.exceptions.TimeoutError)
        and not isinstance(exc, urllib3.exceptions.NewConnectionError)
    )


def classify_error(exc: BaseException, timeout_seconds: int) -> str:
    """Map a request failure to the §5.4 texts, in the Go agent's order of tests."""
    chain = list(_causes(exc))
    texts = " ".join(str(e) for e in chain).lower()
    if any(_is_timeout(e) for e in chain) or "timed out" in texts:
        return timeout_text(timeout_seconds)
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "connection refused" in texts:
        return "Connection refused"
    if (
        any(isinstance(e, socket.gaierror | urllib3.exceptions.NameResolutionError) for e in chain)
        or "name or service not known" in texts
    ):
        return "Host not found"
    detail = ""
    for e in chain:  # the innermost non-empty description says what really happened
        text = str(e).strip()
        if text and not isinstance(e, requests.ConnectionError | urllib3.exceptions.MaxRetryError):
            detail = text
    if not detail:
        detail = str(exc).strip() or type(exc).__name__
    return f"Connection failed: {detail[:100]}"


# --- the request (runs on a worker thread) ------------------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_insecure_warnings_off = False


def _quiet_insecure_warnings() -> None:
    """``verify_ssl: false`` is the backend's explicit choice; don't warn on every request."""
    global _insecure_warnings_off
    if not _insecure_warnings_off:
        warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
        _insecure_warnings_off = True


def system_trust() -> str | bool:
    """The system's CA store (what Go's TLS uses, ``SSL_CERT_FILE``/``SSL_CERT_DIR`` included),
    instead of requests' bundled certifi list; True (certifi) only if there is none."""
    paths = ssl.get_default_verify_paths()
    if paths.cafile and os.path.isfile(paths.cafile):
        return paths.cafile
    if paths.capath and os.path.isdir(paths.capath):
        return paths.capath
    return True


class RequestNotBuilt(Exception):
    """Becomes ``Failed to create request: <text>``; the text never holds the URL's secrets."""


def build_request(config: HealthCheckConfig) -> requests.PreparedRequest:
    method = config.method or "GET"
    if not _TOKEN.fullmatch(method):
        raise RequestNotBuilt(f"invalid method {method[:20]!r}")
    try:
        parts = urlsplit(config.url)
        _ = parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        raise RequestNotBuilt(f"invalid URL: {exc}") from None
    if not parts.scheme:
        raise RequestNotBuilt("missing protocol scheme")
    if parts.scheme.lower() not in ("http", "https"):
        raise RequestNotBuilt(f"unsupported protocol scheme {parts.scheme[:10]!r}")
    if not parts.hostname:
        raise RequestNotBuilt("no Host in request URL")
    headers = {name: value.reveal() for name, value in config.headers}
    if config.auth is not None:  # after the headers: auth wins, like Go
        if config.auth.kind == "basic":
            pair = f"{config.auth.username}:{config.auth.secret.reveal()}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        else:
            headers["Authorization"] = "Bearer " + config.auth.secret.reveal()
    try:
        return requests.Request(method, config.url, headers=headers).prepare()
    except (requests.RequestException, ValueError, UnicodeError) as exc:
        raise RequestNotBuilt(type(exc).__name__) from None


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class Deadline:
    """The hard end of one check: when it passes, every socket the check opened is shut down,
    which wakes any blocked connect, TLS handshake or read on it at once."""

    def __init__(self, due: float) -> None:
        self.due = due
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self.expired = False
        self._done = False

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if not self.expired:
                self._socks.append(sock)
                return
        _shutdown(sock)
        raise TimeoutError("the check's deadline has passed")

    def expire(self) -> None:
        with self._lock:  # shutdown never blocks; under the lock, finish() cannot interleave
            if self._done:
                return
            self.expired = True
            for sock in self._socks:
                _shutdown(sock)
            self._socks.clear()

    def finish(self) -> None:
        with self._lock:
            self._done = True
            self._socks.clear()


class _Watchdog:
    """One daemon thread that expires deadlines in time order; it exits when idle."""

    def __init__(self, idle_exit: float = 10.0) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._idle_exit = idle_exit

    def arm(self, deadline: Deadline) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline.due, next(self._seq), deadline))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="HealthCheck-deadlines", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._heap:
                        if not self._cond.wait(self._idle_exit) and not self._heap:
                            self._thread = None
                            return
                        continue
                    wait = self._heap[0][0] - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                _, _, deadline = heapq.heappop(self._heap)
            deadline.expire()


_WATCHDOG = _Watchdog()
_current = threading.local()  # the Deadline of the check running on this thread


def _watch_new_socket(sock: socket.socket) -> socket.socket:
    deadline: Deadline | None = getattr(_current, "deadline", None)
    if deadline is not None:
        deadline.watch(sock)
    return sock


class _GuardedHTTPConnection(urllib3.connection.HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _watch_new_socket(super()._new_conn())


class _GuardedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        return _watch_new_socket(super()._new_conn())


class _GuardedHTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter whose every socket is watched by the running check's Deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _GuardedHTTPPool,
            "https": _GuardedHTTPSPool,
        }


def perform_check(
    config: HealthCheckConfig, monotonic: Callable[[], float] = time.monotonic
) -> CheckOutcome:
    """One HTTP check, over within ``effective_timeout`` in total, whatever the target does.

    Waits for the response headers only (the body is never read). No proxy is used (the Go
    agent's health-check transport has none), redirects are capped at 10 like Go's.
    """
    started = monotonic()

    def elapsed_ms() -> int:
        return max(0, int((monotonic() - started) * 1000))

    try:
        prepared = build_request(config)
    except RequestNotBuilt as exc:
        return CheckOutcome(
            healthy=False,
            response_time_ms=elapsed_ms(),
            error_message=f"Failed to create request: {exc}",
        )
    timeout = config.effective_timeout
    if not config.verify_ssl:
        _quiet_insecure_warnings()
    session = requests.Session()
    session.trust_env = False
    session.max_redirects = MAX_REDIRECTS
    adapter = _GuardedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    deadline = Deadline(time.monotonic() + timeout)
    _WATCHDOG.arm(deadline)
    _current.deadline = deadline
    try:
        response = session.send(
            prepared,
            timeout=(timeout, timeout),
            verify=system_trust() if config.verify_ssl else False,
            allow_redirects=config.follow_redirects,
            stream=True,
        )
    except Exception as exc:
        return CheckOutcome(
            healthy=False,
            response_time_ms=elapsed_ms(),
            error_message=timeout_text(timeout)
            if deadline.expired
            else classify_error(exc, timeout),
        )
    finally:
        _current.deadline = None
        deadline.finish()
        session.close()
    spent = elapsed_ms()
    response.close()
    status = response.status_code
    healthy = config.expects(status)
    return CheckOutcome(
        healthy=healthy,
        status_code=status,
        response_time_ms=spent,
        error_message="" if healthy else f"Status {status}",
    )


Checker = Callable[[HealthCheckConfig], CheckOutcome]


class HealthCheckMemory:
    """What a restarted HealthCheckActor picks up: the configs and the last known link state.

    Held by the supervisor's factory (like the Updater's FlowRegistry): the backend sends the
    configs only once per connection, so a crash must not silently end every check.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connected = False
        self._configs: tuple[HealthCheckConfig, ...] = ()

    def remember(self, *, connected: bool, configs: tuple[HealthCheckConfig, ...]) -> None:
        with self._lock:
            self._connected, self._configs = connected, configs

    def recall(self) -> tuple[bool, tuple[HealthCheckConfig, ...]]:
        with self._lock:
            return self._connected, self._configs


@dataclass
class HealthCheckStats:
    """Counters for tests and diagnostics (read through a proxy)."""

    started: int = 0
    reported: int = 0
    dropped: int = 0  # results from an ended loop or a removed check
    overdue: int = 0


def _where(url: str) -> str:
    """scheme://host:port of a URL, for logs (no credentials, path or query)."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return "<unparsable URL>"


class HealthCheckActor(SupervisedActor):
    def __init__(
        self,
        ctx: ActorContext,
        *,
        memory: HealthCheckMemory | None = None,
        workers: int = DEFAULT_WORKERS,
        checker: Checker | None = None,
        tick_seconds: float = TICK_SECONDS,
        deadline_grace: float = DEADLINE_GRACE_SECONDS,
    ) -> None:
        super().__init__(ctx)
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self._memory = memory or HealthCheckMemory()
        self._checker: Checker = checker or perform_check
        self._tick_seconds = tick_seconds
        self._grace = deadline_grace
        self._workers = workers
        self._pool: WorkerPool | None = None
        self._schedule = CheckSchedule()
        self._connected = False
        self._loop = 0
        self._tick: TimerHandle | None = None
        self._healthy: dict[str, bool] = {}  # last reported state, to log changes only
        self.stats = HealthCheckStats()

    # --- lifecycle ------------------------------------------------------------------------------

    def on_start(self) -> None:
        self._pool = WorkerPool(
            self._workers, "HealthCheckActor-worker", idle_s=WORKER_IDLE_SECONDS
        )
        connected, configs = self._memory.recall()
        self._schedule.replace_all(configs)
        if configs:
            log.info("health checks: resuming %d configured check(s)", len(configs))
        if connected:
            self._start_loop()

    def _release(self) -> None:
        self._cancel_tick()
        if self._pool is not None:
            self._pool.close()

    @property
    def worker_threads(self) -> int:
        return self._pool.threads if self._pool is not None else 0

    # --- dispatch -------------------------------------------------------------------------------

    def handle(self, message: object) -> Any:
        if not isinstance(message, Inbox):
            log.warning("HealthChecks ignored %s", type(message).__name__)
            return None
        match message:
            case LinkStateChanged(connected=True):
                self._start_loop()
            case LinkStateChanged():
                self._stop_loop()
            case SyncHealthChecks():
                self._sync(message)
            case SetHealthCheck(config=raw):
                try:
                    config = parse_one(raw)
                except BadConfig as exc:
                    log.warning("ignored health_check_config for %s", exc)
                else:
                    self._schedule.put(config)
                    self._log_config("updated", config, logging.INFO)
                    self._remember()
            case RemoveHealthCheck(container_id=container_id):
                if self._schedule.remove(container_id):
                    log.info("health check for %s removed", container_id)
                else:
                    log.info("health check for %s not configured; nothing to remove", container_id)
                self._healthy.pop(container_id, None)
                self._remember()
            case HealthTick(loop=loop):
                if loop == self._loop and self._connected:
                    self._run_due()
                    self._tick = self.tell_self_later(self._tick_seconds, HealthTick(loop=loop))
            case CheckFinished():
                self._finished(message)
            case CheckOverdue():
                self._overdue(message)
            case _:
                assert_never(message)
        return None

    def _sync(self, message: SyncHealthChecks) -> None:
        parsed = parse_sync(message.configs)
        self._schedule.replace_all(parsed.configs)
        for gone in [c for c in self._healthy if self._schedule.get(c) is None]:
            del self._healthy[gone]  # containers come and go: forget removed checks
        ignored = ""
        if parsed.problems:
            shown = "; ".join(parsed.problems[:3])
            more = f" (and {len(parsed.problems) - 3} more)" if len(parsed.problems) > 3 else ""
            ignored = f"; ignored {len(parsed.problems)} bad config(s): {shown}{more}"
        log.log(
            logging.WARNING if parsed.problems else logging.INFO,
            "health checks synced: %d check(s)%s",
            len(parsed.configs),
            ignored,
        )
        for config in parsed.configs:
            self._log_config("configured", config, logging.DEBUG)
        self._remember()

    # --- loop -----------------------------------------------------------------------------------

    def _start_loop(self) -> None:
        self._cancel_tick()
        self._connected = True
        self._loop += 1
        self._schedule.restart()
        self._remember()
        self._tick = self.tell_self_later(self._tick_seconds, HealthTick(loop=self._loop))

    def _stop_loop(self) -> None:
        self._cancel_tick()
        self._connected = False
        self._loop += 1  # in-flight results belong to the old loop: discarded
        self._schedule.restart()
        self._remember()

    def _cancel_tick(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None

    def _remember(self) -> None:
        self._memory.remember(connected=self._connected, configs=self._schedule.configs)

    def _run_due(self) -> None:
        now = self.ctx.clock.monotonic()
        for config, run_id in self._schedule.due(now):
            self._submit(config, run_id)

    def _submit(self, config: HealthCheckConfig, run_id: int) -> None:
        assert self._pool is not None
        ref, loop, checker = self.actor_ref, self._loop, self._checker
        clock, scheduler, grace = self.ctx.clock, self.ctx.scheduler, self._grace

        def job() -> None:
            # The deadline starts now, when a worker has the check, not when it was queued.
            started = clock.monotonic()
            backstop = scheduler.tell_later(
                config.effective_timeout + grace,
                ref,
                CheckOverdue(
                    loop=loop,
                    run_id=run_id,
                    container_id=config.container_id,
                    host_id=config.host_id,
                    timeout_seconds=config.effective_timeout,
                    started=started,
                ),
            )
            try:
                outcome = checker(config)
            except Exception as exc:  # a checker bug must not lose the run
                log.exception("health check for %s raised", config.container_id)
                outcome = CheckOutcome(
                    healthy=False, error_message=f"Connection failed: {str(exc)[:100]}"
                )
            finally:
                backstop.cancel()
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(
                    CheckFinished(
                        loop=loop,
                        run_id=run_id,
                        container_id=config.container_id,
                        host_id=config.host_id,
                        outcome=outcome,
                    )
                )

        if not self._pool.submit(job):
            self._schedule.finish(config.container_id, run_id)
            return
        self.stats.started += 1

    def _finished(self, msg: CheckFinished) -> None:
        if msg.loop != self._loop or not self._connected:
            self.stats.dropped += 1
            log.debug("dropped a health check result from an ended loop (%s)", msg.container_id)
            return
        if not self._schedule.finish(msg.container_id, msg.run_id):
            self.stats.dropped += 1
            log.debug("dropped a stale health check result for %s", msg.container_id)
            return
        self._report(msg.container_id, msg.host_id, msg.outcome)

    def _overdue(self, msg: CheckOverdue) -> None:
        if msg.loop != self._loop or not self._connected:
            return
        if not self._schedule.finish(msg.container_id, msg.run_id):
            return  # it finished in time
        self.stats.overdue += 1
        spent = max(0, int((self.ctx.clock.monotonic() - msg.started) * 1000))
        log.warning(
            "health check for %s still running after its %ds timeout; reporting a timeout",
            msg.container_id,
            msg.timeout_seconds,
        )
        outcome = CheckOutcome(
            healthy=False, response_time_ms=spent, error_message=timeout_text(msg.timeout_seconds)
        )
        self._report(msg.container_id, msg.host_id, outcome)

    def _report(self, container_id: str, host_id: str, outcome: CheckOutcome) -> None:
        payload = result_payload(container_id, host_id, outcome, self.ctx.clock.time_ns())
        self.stats.reported += 1
        # buffer=False: a result must never be delivered on a later connection (PROTOCOL §4.6)
        self.ctx.peers.tell(
            Role.CONNECTION,
            EventOut(command="health_check_result", payload=RawJson.of(payload), buffer=False),
        )
        previous = self._healthy.get(container_id)
        self._healthy[container_id] = outcome.healthy
        if previous is False and outcome.healthy:
            log.info("health check for %s: healthy again", container_id)
        elif previous is not False and not outcome.healthy:
            log.warning("health check for %s: unhealthy (%s)", container_id, outcome.error_message)
        else:
            log.debug(
                "health check for %s: %s in %dms%s",
                container_id,
                "healthy" if outcome.healthy else "unhealthy",
                outcome.response_time_ms,
                f" ({outcome.error_message})" if outcome.error_message else "",
            )

    @staticmethod
    def _log_config(what: str, config: HealthCheckConfig, level: int) -> None:
        log.log(
            level,
            "health check for %s %s: %s %s every %ds, timeout %ds%s%s",
            config.container_id,
            what,
            config.method,
            _where(config.url),
            config.check_interval_seconds,
            config.effective_timeout,
            "" if config.enabled else " (disabled)",
            "" if config.verify_ssl else ", TLS verification off",
        )


__all__ = [
    "CheckSchedule",
    "HealthCheckActor",
    "HealthCheckMemory",
    "HealthCheckStats",
    "classify_error",
    "perform_check",
    "result_payload",
]
