"""Agent-side HTTP health checks (PROTOCOL §4.6, §5.4).

Three layers: pure parsing/scheduling/formatting; ``perform_check`` against real HTTP(S) servers
on 127.0.0.1; the actor with a fake clock/scheduler and a scripted checker; and end to end (the
real agent, the strict FakeHub sending ``health_check_configs_sync`` after auth, real servers).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pykka
import pytest
import requests
import urllib3

from actors.base import Peers, SystemClock, ThreadScheduler
from actors.health_checks import (
    CheckSchedule,
    HealthCheckActor,
    HealthCheckMemory,
    classify_error,
    perform_check,
    result_payload,
)
from messages.common import Ping, RawJson
from messages.families import ROUTES
from messages.health import (
    MAX_HEALTH_CHECKS,
    BadConfig,
    CheckOutcome,
    HealthCheckConfig,
    RemoveHealthCheck,
    SetHealthCheck,
    SyncHealthChecks,
    parse_config,
    parse_one,
    parse_status_codes,
    parse_sync,
)
from messages.outbound import EventOut, LinkStateChanged
from messages.roles import Role
from messages.wire import IgnoredFrame, decode_frame
from tests.support.agent_harness import REGISTRATION_TOKEN, running_agent
from tests.support.daemon import PrivateDockerd
from tests.support.fakes import FakeClock, FakeScheduler, ProbeHandle, make_ctx
from tests.support.hub import FakeHub
from tests.support.hub_events import health_check_result_problem
from tests.support.tls import make_pki
from tests.support.waiting import wait_for

CID = "3f9a1b2c4d5e"
CID2 = "aaaabbbbcccc"
SECRET_TOKEN = "tok-3b1f0c9e7d2a"
SECRET_PASSWORD = "pw-8c6e2a41f0d9"
SECRET_HEADER = "key-71d0e93a5b2c"


def raw_config(url: str = "http://127.0.0.1:9/health", **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "container_id": CID,
        "host_id": "host-1",
        "enabled": True,
        "url": url,
        "method": "GET",
        "expected_status_codes": "200",
        "timeout_seconds": 1,
        "check_interval_seconds": 1,
        "follow_redirects": True,
        "verify_ssl": True,
        "headers_json": "",
        "auth_config_json": "",
    }
    config.update(overrides)
    return config


def config(url: str = "http://127.0.0.1:9/health", **overrides: Any) -> HealthCheckConfig:
    return parse_config(raw_config(url, **overrides))


def sync(*configs: dict[str, Any] | HealthCheckConfig) -> SyncHealthChecks:
    """A ``health_check_configs_sync`` as the Connection routes it (decoded by the frame codec)."""
    raw = [c if isinstance(c, dict) else _raw_of(c) for c in configs]
    frame = {"type": "health_check_configs_sync", "payload": {"configs": raw}}
    decoded = decode_frame(json.dumps(frame))
    assert isinstance(decoded, SyncHealthChecks), decoded
    return decoded


def set_check(cfg: dict[str, Any] | HealthCheckConfig) -> SetHealthCheck:
    raw = cfg if isinstance(cfg, dict) else _raw_of(cfg)
    decoded = decode_frame(json.dumps({"type": "health_check_config", "payload": raw}))
    assert isinstance(decoded, SetHealthCheck), decoded
    return decoded


def _raw_of(cfg: HealthCheckConfig) -> dict[str, Any]:
    assert not cfg.headers and cfg.auth is None, "build configs with secrets as raw_config()"
    return raw_config(
        cfg.url,
        container_id=cfg.container_id,
        host_id=cfg.host_id,
        enabled=cfg.enabled,
        method=cfg.method,
        expected_status_codes=cfg.expected_status_codes,
        timeout_seconds=cfg.timeout_seconds,
        check_interval_seconds=cfg.check_interval_seconds,
        follow_redirects=cfg.follow_redirects,
        verify_ssl=cfg.verify_ssl,
    )


# ================================================================================================
# a real HTTP(S) server on 127.0.0.1


@dataclass
class Route:
    statuses: list[int] = field(default_factory=lambda: [200])  # one per request; last repeats
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class LocalServer:
    """``http.server`` in a thread; routes by path, records every request it got."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.seen: list[Seen] = []
        self.finished: list[str] = []  # paths whose response was fully sent
        self.cond = threading.Condition()
        self.release = threading.Event()  # cuts delays short at stop()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                path = self.path.split("?")[0]
                with server.cond:
                    server.seen.append(Seen(self.command, self.path, dict(self.headers.items())))
                    route = server.routes.get(path, Route(statuses=[404]))
                    count = sum(1 for s in server.seen if s.path.split("?")[0] == path)
                    server.cond.notify_all()
                status = route.statuses[min(count, len(route.statuses)) - 1]
                if route.delay:
                    server.release.wait(route.delay)
                self.send_response(status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(b"ok")
                with server.cond:
                    server.finished.append(path)
                    server.cond.notify_all()

            do_GET = do_POST = do_HEAD = do_PUT = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def requests_to(self, path: str) -> list[Seen]:
        with self.cond:
            return [s for s in self.seen if s.path.split("?")[0] == path]

    def wait_requests(self, path: str, count: int, timeout: float = 10) -> list[Seen]:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.requests_to(path)) >= count, timeout)
        assert ok, f"{path}: {len(self.requests_to(path))} request(s), wanted {count}"
        return self.requests_to(path)

    def wait_finished(self, path: str, timeout: float = 10) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: path in self.finished, timeout)

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[LocalServer]:
    srv = LocalServer()
    yield srv
    srv.stop()


class Slowloris:
    """A TCP server on 127.0.0.1 that answers every connection with one byte of an HTTP response
    every ``interval`` seconds, forever: no read timeout ever fires, the headers never end.

    ``phase`` picks where it stalls: ``headers`` (status line and headers trickle), ``accept``
    (the connection is accepted, nothing is ever sent), ``tls`` (a TLS handshake that never
    completes: the ServerHello never comes) or ``redirect`` (every response, after
    ``interval``, is a redirect to itself: each hop is quick, the chain is endless).
    """

    def __init__(self, interval: float = 0.2, phase: str = "headers") -> None:
        self.interval = interval
        self.phase = phase
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.open = 0
        self.accepted = 0
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, name="slowloris", daemon=True)
        self.thread.start()

    def url(self, path: str = "/health") -> str:
        return f"{'https' if self.phase == 'tls' else 'http'}://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.open += 1
                self.accepted += 1
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        body = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"z" * 100_000
        try:
            with conn:
                conn.settimeout(0.05)
                for i in range(len(body)):
                    if self.stopped.wait(self.interval):
                        return
                    try:  # a closed client shows up as EOF (or a reset) on a read
                        if conn.recv(65536) == b"":
                            return
                    except TimeoutError:
                        pass
                    if self.phase == "headers":
                        conn.sendall(body[i : i + 1])
                    elif self.phase == "redirect":  # each hop quick enough, the chain is not
                        conn.sendall(
                            b"HTTP/1.1 302 Found\r\nLocation: /again\r\n"
                            b"Content-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        return
        except OSError:
            return
        finally:
            with self.lock:
                self.open -= 1

    def connections(self) -> int:
        with self.lock:
            return self.open

    def stop(self) -> None:
        self.stopped.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        self.thread.join(5)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ================================================================================================
# pure: parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ((200, 200),)),
        ("200", ((200, 200),)),
        ("200-299", ((200, 299),)),
        ("200, 201,204", ((200, 200), (201, 201), (204, 204))),
        ("200-299,301", ((200, 299), (301, 301))),
        (" 500 - 503 ", ((500, 503),)),
        ("abc", ((200, 200),)),
        ("299-200", ((200, 200),)),  # reversed range: skipped, nothing left -> 200
        ("2x0-299,404", ((404, 404),)),
        ("1-2-3,302", ((302, 302),)),
    ],
)
def test_expected_status_codes_parse_like_go(text: str, expected: tuple[Any, ...]) -> None:
    assert parse_status_codes(text) == expected


def test_a_full_config_parses_with_headers_and_auth() -> None:
    c = config(
        "http://10.0.0.5:8080/health",
        method="HEAD",
        expected_status_codes="200-299",
        timeout_seconds=0,
        check_interval_seconds=30,
        follow_redirects=False,
        verify_ssl=False,
        headers_json=json.dumps({"X-Probe": "dockmon", "X-Api-Key": SECRET_HEADER}),
        auth_config_json=json.dumps({"type": "bearer", "token": SECRET_TOKEN}),
    )
    assert (c.container_id, c.host_id, c.method, c.url) == (
        CID,
        "host-1",
        "HEAD",
        "http://10.0.0.5:8080/health",
    )
    assert c.expects(204) and not c.expects(301)
    assert c.effective_timeout == 10  # <= 0 means 10 s
    assert not c.follow_redirects and not c.verify_ssl
    assert [(n, v.reveal()) for n, v in c.headers] == [
        ("X-Probe", "dockmon"),
        ("X-Api-Key", SECRET_HEADER),
    ]
    assert c.auth is not None and c.auth.kind == "bearer"
    assert c.auth.secret.reveal() == SECRET_TOKEN
    shown = repr(c)
    assert SECRET_TOKEN not in shown and SECRET_HEADER not in shown


def test_missing_keys_take_safe_defaults() -> None:
    c = parse_config({"container_id": CID, "url": "http://127.0.0.1/"})
    assert c.enabled and c.method == "GET" and c.follow_redirects and c.verify_ssl
    assert c.effective_timeout == 10 and c.check_interval_seconds == 30
    assert c.status_ranges == ((200, 200),) and c.headers == () and c.auth is None


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"container_id": ""}, "container_id is required"),
        ({"container_id": 12}, "container_id must be a string"),
        ({"url": None}, "url must be a string"),
        ({"enabled": "yes"}, "enabled must be a boolean"),
        ({"timeout_seconds": "5"}, "timeout_seconds must be a number"),
        ({"timeout_seconds": True}, "timeout_seconds must be a number"),
        ({"check_interval_seconds": 2.5}, "whole number"),
        ({"verify_ssl": 1}, "verify_ssl must be a boolean"),
        ({"headers_json": "{not json"}, "headers_json is not valid JSON"),
        ({"headers_json": '["a"]'}, "headers_json must be a JSON object"),
        ({"headers_json": '{"X": 1}'}, "must map header names to strings"),
        ({"headers_json": '{"X": "a\\r\\nInjected: 1"}'}, "invalid header"),
        ({"headers_json": {"X": "y"}}, "headers_json must be a string"),
        ({"auth_config_json": "{"}, "auth_config_json is not valid JSON"),
        ({"auth_config_json": '{"type":"digest"}'}, "is not basic or bearer"),
        ({"auth_config_json": '{"type":"basic","password":7}'}, "password must be a string"),
    ],
)
def test_bad_configs_are_refused_with_a_reason(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(BadConfig, match=problem):
        config(**overrides)


def test_errors_about_secret_fields_never_quote_them() -> None:
    for key in ("headers_json", "auth_config_json"):
        with pytest.raises(BadConfig) as info:
            config(**{key: '{"token": "' + SECRET_TOKEN + '", broken'})
        assert SECRET_TOKEN not in str(info.value)


def test_frames_decode_to_typed_messages_routed_to_health_checks() -> None:
    good, other = raw_config(), raw_config(container_id=CID2)
    sync = decode_frame(
        json.dumps(
            {
                "type": "health_check_configs_sync",
                "payload": {"configs": [good, {"container_id": 5}, "junk", other]},
            }
        )
    )
    assert isinstance(sync, SyncHealthChecks) and sync.count == 4
    parsed = parse_sync(sync.configs)  # on the actor's thread: bad entries left out, rest kept
    assert [c.container_id for c in parsed.configs] == [CID, CID2]
    assert len(parsed.problems) == 2 and parsed.problems[0].startswith("?: container_id")
    one = decode_frame(json.dumps({"type": "health_check_config", "payload": good}))
    assert isinstance(one, SetHealthCheck) and parse_one(one.config).container_id == CID
    gone = decode_frame(
        json.dumps({"type": "health_check_config_remove", "payload": {"container_id": CID}})
    )
    assert gone == RemoveHealthCheck(container_id=CID)
    for kind in (SyncHealthChecks, SetHealthCheck, RemoveHealthCheck):
        assert ROUTES[kind] is Role.HEALTH_CHECKS
    empty = decode_frame('{"type":"health_check_configs_sync","payload":{"configs":[]}}')
    assert empty == SyncHealthChecks(configs=RawJson("[]"), count=0)


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "health_check_configs_sync"},
        {"type": "health_check_configs_sync", "payload": {"configs": {"a": 1}}},
        {"type": "health_check_config", "payload": [1]},
        {"type": "health_check_config_remove", "payload": {}},
        {"type": "health_check_config_remove", "payload": {"container_id": 7}},
    ],
)
def test_malformed_frames_are_ignored(
    frame: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert isinstance(decode_frame(json.dumps(frame)), IgnoredFrame)
    assert caplog.records  # and said why


def test_decoding_a_sync_only_checks_its_shape_and_count(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The Connection's thread never validates configs; too many are refused whole, at once."""

    def not_here(_value: Any) -> HealthCheckConfig:
        raise AssertionError("configs are validated by the HealthChecks actor")

    monkeypatch.setattr("messages.health.parse_config", not_here)
    frame = {"type": "health_check_configs_sync", "payload": {"configs": [{}] * 1000}}
    decoded = decode_frame(json.dumps(frame))
    assert isinstance(decoded, SyncHealthChecks) and decoded.count == MAX_HEALTH_CHECKS
    frame["payload"]["configs"] = [{}] * (MAX_HEALTH_CHECKS + 1)  # type: ignore[index]
    with caplog.at_level(logging.WARNING):
        assert isinstance(decode_frame(json.dumps(frame)), IgnoredFrame)
    assert [r.getMessage() for r in caplog.records] == [
        f"refused health_check_configs_sync with {MAX_HEALTH_CHECKS + 1} configs: this agent runs "
        f"at most {MAX_HEALTH_CHECKS} health checks; the current checks stay as they are"
    ]


def test_many_bad_configs_cost_one_summary_line(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig()
    bad = [
        raw_config(container_id=f"{n:012x}", enabled="yes") for n in range(MAX_HEALTH_CHECKS - 1)
    ]
    with caplog.at_level(logging.DEBUG, logger="actors.health_checks"):
        rig.tell(sync(*bad, raw_config()))
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 1, lines[:5]
    assert lines[0].startswith(f"health checks synced: 1 check(s); ignored {len(bad)} bad")
    assert "(and 996 more)" in lines[0]


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"expected_status_codes": ",".join(["200"] * 65)}, "more than 64 parts"),
        ({"headers_json": json.dumps({f"X-{n}": "v" for n in range(65)})}, "at most 64"),
        ({"url": "http://127.0.0.1/" + "a" * 9000}, "longer than 8192"),
    ],
)
def test_each_config_is_bounded(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(BadConfig, match=problem):
        parse_config(raw_config(**overrides))


@pytest.mark.parametrize(
    "payload",
    [{"container_id": CID, "url": 5}, raw_config(headers_json="{bad")],
)
def test_a_bad_single_config_is_refused_by_the_actor_with_its_container(
    payload: dict[str, Any],
) -> None:
    decoded = decode_frame(json.dumps({"type": "health_check_config", "payload": payload}))
    assert isinstance(decoded, SetHealthCheck)  # the Connection only checked the shape
    with pytest.raises(BadConfig, match=f"^{CID}: "):
        parse_one(decoded.config)


# ================================================================================================
# pure: results and error texts


def test_result_payload_omits_zero_status_and_empty_error() -> None:
    ns = 1_783_973_160_123_456_789  # 2026-07-13T20:06:00.123Z
    ok = result_payload(
        CID, "h", CheckOutcome(healthy=True, status_code=200, response_time_ms=3), ns
    )
    assert ok == {
        "container_id": CID,
        "host_id": "h",
        "healthy": True,
        "status_code": 200,
        "response_time_ms": 3,
        "timestamp": "2026-07-13T20:06:00Z",
    }
    failed = result_payload(
        CID, "h", CheckOutcome(healthy=False, error_message="Connection refused"), ns
    )
    assert "status_code" not in failed and failed["error_message"] == "Connection refused"
    assert list(failed) == [
        "container_id",
        "host_id",
        "healthy",
        "response_time_ms",
        "error_message",
        "timestamp",
    ]
    assert health_check_result_problem(ok) is None
    assert health_check_result_problem(failed) is None
    assert health_check_result_problem({**ok, "error_message": ""}) is not None
    assert health_check_result_problem({**failed, "status_code": 0}) is not None
    assert health_check_result_problem({**ok, "timestamp": "2026-07-13T20:06:00.5Z"}) is not None


def test_error_classification() -> None:
    refused = requests.ConnectionError(
        urllib3.exceptions.MaxRetryError(
            None,  # type: ignore[arg-type]
            "/",
            urllib3.exceptions.NewConnectionError(None, "boom"),  # type: ignore[arg-type]
        )
    )
    refused.__context__ = ConnectionRefusedError(111, "Connection refused")
    assert classify_error(refused, 5) == "Connection refused"
    assert classify_error(requests.ReadTimeout("read timed out"), 7) == "Timeout after 7s"
    dns = requests.ConnectionError("x")
    dns.__cause__ = socket.gaierror(-2, "Name or service not known")
    assert classify_error(dns, 5) == "Host not found"
    weird = requests.ConnectionError("outer")
    weird.__cause__ = OSError("y" * 300)
    text = classify_error(weird, 5)
    assert text == "Connection failed: " + "y" * 100


# ================================================================================================
# pure: scheduling


def test_schedule_runs_due_checks_once_per_interval_and_never_overlaps() -> None:
    s = CheckSchedule()
    s.replace_all((config(check_interval_seconds=5), config(container_id=CID2, enabled=False)))
    first = s.due(100.0)
    assert [(c.container_id, run) for c, run in first] == [(CID, 1)]
    assert s.due(110.0) == []  # still running: no overlap
    assert s.finish(CID, 1) and not s.finish(CID, 1)
    assert s.due(104.9) == []  # interval counts from the start of the last run
    assert [c.container_id for c, _ in s.due(105.0)] == [CID]
    s.restart()  # new loop: due at once, old runs forgotten
    assert s.running(CID) is None
    assert [run for _, run in s.due(105.5)] == [3]


def test_schedule_sync_replaces_config_adds_and_remove_deletes() -> None:
    s = CheckSchedule()
    s.replace_all((config(), config(container_id=CID2)))
    s.due(0.0)
    s.replace_all((config(container_id=CID2, url="http://127.0.0.1:1/new"),))
    assert [c.container_id for c in s.configs] == [CID2]
    assert s.running(CID) is None and s.running(CID2) is not None
    assert s.get(CID2) is not None and s.get(CID2).url.endswith("/new")  # type: ignore[union-attr]
    s.put(config())
    assert {c.container_id for c in s.configs} == {CID, CID2}
    assert s.remove(CID2) and not s.remove(CID2)
    assert [c.container_id for c, _ in s.due(1.0)] == [CID]


# ================================================================================================
# perform_check against real servers


def test_healthy_200(server: LocalServer) -> None:
    server.routes["/health"] = Route()
    outcome = perform_check(config(server.url("/health")))
    assert outcome == CheckOutcome(
        healthy=True, status_code=200, response_time_ms=outcome.response_time_ms
    )
    assert 0 <= outcome.response_time_ms < 1000


def test_unexpected_status_503(server: LocalServer) -> None:
    server.routes["/health"] = Route(statuses=[503])
    outcome = perform_check(config(server.url("/health")))
    assert (outcome.healthy, outcome.status_code, outcome.error_message) == (
        False,
        503,
        "Status 503",
    )


def test_status_ranges(server: LocalServer) -> None:
    server.routes["/204"] = Route(statuses=[204])
    server.routes["/503"] = Route(statuses=[503])
    assert perform_check(config(server.url("/204"), expected_status_codes="200-299")).healthy
    assert not perform_check(config(server.url("/204"), expected_status_codes="200")).healthy
    assert perform_check(config(server.url("/503"), expected_status_codes="200,500-503")).healthy
    nonsense = perform_check(config(server.url("/204"), expected_status_codes="nonsense"))
    assert nonsense.error_message == "Status 204"  # unparsable means [200]


def test_timeout_against_a_slow_server(server: LocalServer) -> None:
    server.routes["/slow"] = Route(delay=5)
    started = time.monotonic()
    outcome = perform_check(config(server.url("/slow"), timeout_seconds=1))
    took = time.monotonic() - started
    assert (outcome.healthy, outcome.status_code, outcome.error_message) == (
        False,
        0,
        "Timeout after 1s",
    )
    assert 0.9 <= took < 2.5, took
    assert 900 <= outcome.response_time_ms < 2500


@pytest.mark.parametrize("phase", ["headers", "accept", "tls", "redirect"])
def test_a_check_has_a_hard_total_deadline_whatever_phase_stalls(phase: str) -> None:
    slow = Slowloris(interval=0.6 if phase == "redirect" else 0.2, phase=phase)
    done: list[CheckOutcome] = []
    try:
        started = time.monotonic()
        worker = threading.Thread(
            target=lambda: done.append(
                perform_check(config(slow.url(), timeout_seconds=1, verify_ssl=False))
            ),
            daemon=True,
        )
        worker.start()
        worker.join(6)
        took = time.monotonic() - started
        assert done, f"the check was still running after {took:.1f}s (timeout 1s)"
        outcome = done[0]
        assert (outcome.healthy, outcome.status_code, outcome.error_message) == (
            False,
            0,
            "Timeout after 1s",
        ), outcome
        assert took < 1.8, took
        assert 900 <= outcome.response_time_ms < 1800
        wait_for(lambda: slow.connections() == 0, 5, "the check's connections to be closed")
    finally:
        slow.stop()


def test_connection_refused_on_a_closed_port() -> None:
    outcome = perform_check(config(f"http://127.0.0.1:{closed_port()}/health"))
    assert (outcome.healthy, outcome.status_code, outcome.error_message) == (
        False,
        0,
        "Connection refused",
    )


def test_redirects_followed_or_returned(server: LocalServer) -> None:
    server.routes["/old"] = Route(statuses=[302], headers={"Location": "/new"})
    server.routes["/new"] = Route()
    followed = perform_check(config(server.url("/old"), follow_redirects=True))
    assert (followed.healthy, followed.status_code) == (True, 200)
    assert len(server.requests_to("/new")) == 1
    kept = perform_check(config(server.url("/old"), follow_redirects=False))
    assert (kept.healthy, kept.status_code, kept.error_message) == (False, 302, "Status 302")
    assert len(server.requests_to("/new")) == 1  # not followed
    accepted = perform_check(
        config(server.url("/old"), follow_redirects=False, expected_status_codes="300-399")
    )
    assert accepted.healthy and accepted.status_code == 302


def test_method_headers_and_auth_reach_the_server(server: LocalServer) -> None:
    server.routes["/h"] = Route()
    headers = json.dumps({"X-Probe": "dockmon", "X-Api-Key": SECRET_HEADER})
    basic = json.dumps({"type": "basic", "username": "probe", "password": SECRET_PASSWORD})
    bearer = json.dumps({"type": "bearer", "token": SECRET_TOKEN})
    url = server.url("/h")
    assert perform_check(config(url, method="HEAD", headers_json=headers)).healthy
    assert perform_check(config(url, method="POST", auth_config_json=basic)).healthy
    assert perform_check(config(url, headers_json=headers, auth_config_json=bearer)).healthy
    first, second, third = server.requests_to("/h")
    assert first.method == "HEAD"
    assert first.headers["X-Probe"] == "dockmon" and first.headers["X-Api-Key"] == SECRET_HEADER
    assert "Authorization" not in first.headers
    assert second.method == "POST"
    assert second.headers["Authorization"] == "Basic " + base64.b64encode(
        f"probe:{SECRET_PASSWORD}".encode()
    ).decode("ascii")
    assert third.method == "GET" and third.headers["Authorization"] == f"Bearer {SECRET_TOKEN}"
    assert third.headers["X-Probe"] == "dockmon"


def test_https_self_signed_needs_verify_ssl_false(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    tls_server = LocalServer(tls=pki.server_context())
    try:
        tls_server.routes["/health"] = Route()
        url = tls_server.url("/health")
        insecure = perform_check(config(url, verify_ssl=False))
        assert (insecure.healthy, insecure.status_code) == (True, 200)
        verified = perform_check(config(url, verify_ssl=True))
        assert not verified.healthy and verified.status_code == 0
        assert verified.error_message.startswith("Connection failed: ")
        assert "CERTIFICATE_VERIFY_FAILED" in verified.error_message
        assert len(verified.error_message) <= len("Connection failed: ") + 100
    finally:
        tls_server.stop()


def test_https_verification_uses_the_system_trust_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like Go, trust comes from the system store (here via SSL_CERT_FILE), not certifi."""
    pki = make_pki(tmp_path / "pki")
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_pem))
    tls_server = LocalServer(tls=pki.server_context())
    try:
        tls_server.routes["/health"] = Route()
        verified = perform_check(config(tls_server.url("/health"), verify_ssl=True))
        assert (verified.healthy, verified.status_code) == (True, 200), verified
    finally:
        tls_server.stop()


@pytest.mark.parametrize(
    ("url", "method", "text"),
    [
        ("ftp://127.0.0.1/x", "GET", "Failed to create request: unsupported protocol scheme 'ftp'"),
        ("127.0.0.1/health", "GET", "Failed to create request: missing protocol scheme"),
        ("http:///health", "GET", "Failed to create request: no Host in request URL"),
        ("http://127.0.0.1:99999/", "GET", "Failed to create request: invalid URL"),
        ("http://127.0.0.1/", "GE T", "Failed to create request: invalid method 'GE T'"),
    ],
)
def test_requests_that_cannot_be_built(url: str, method: str, text: str) -> None:
    outcome = perform_check(config(url, method=method))
    assert not outcome.healthy and outcome.status_code == 0
    assert outcome.error_message.startswith(text)


# ================================================================================================
# the actor, with a fake clock and scheduler and a scripted checker


class ScriptedChecker:
    """Answers per container id; ``hold(cid)`` makes that check block until ``release(cid)``."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.calls: list[HealthCheckConfig] = []
        self.gates: dict[str, threading.Event] = {}
        self.outcome = CheckOutcome(healthy=True, status_code=200, response_time_ms=5)

    def hold(self, cid: str) -> None:
        self.gates[cid] = threading.Event()

    def release(self, cid: str) -> None:
        self.gates[cid].set()

    def __call__(self, cfg: HealthCheckConfig) -> CheckOutcome:
        with self.cond:
            self.calls.append(cfg)
            self.cond.notify_all()
        gate = self.gates.get(cfg.container_id)
        if gate is not None:
            gate.wait(10)
        return self.outcome

    def calls_for(self, cid: str) -> list[HealthCheckConfig]:
        with self.cond:
            return [c for c in self.calls if c.container_id == cid]

    def wait_calls(self, cid: str, count: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.calls_for(cid)) >= count, 5)


@dataclass
class Rig:
    ref: pykka.ActorRef[Any]
    clock: FakeClock
    scheduler: FakeScheduler
    connection: ProbeHandle
    checker: ScriptedChecker
    memory: HealthCheckMemory
    peers: Peers

    def tell(self, message: Any) -> None:
        self.ref.tell(message)
        self.barrier()

    def barrier(self) -> None:
        self.ref.ask(Ping(), timeout=3)

    def advance(self, seconds: float) -> None:
        self.scheduler.advance(seconds)
        self.barrier()

    def started(self) -> int:
        return int(self.ref.proxy().stats.get(timeout=3).started)

    def stat(self, name: str) -> int:
        return int(getattr(self.ref.proxy().stats.get(timeout=3), name))

    def result(self, timeout: float = 3) -> dict[str, Any]:
        event = self.connection.expect(EventOut, timeout)
        assert event.command == "health_check_result" and event.buffer is False
        payload: dict[str, Any] = event.payload.value()
        assert health_check_result_problem(payload) is None, payload
        return payload

    def result_for(self, cid: str, timeout: float = 3) -> dict[str, Any]:
        event = self.connection.expect(
            EventOut, timeout, where=lambda e: e.payload.value()["container_id"] == cid
        )
        payload: dict[str, Any] = event.payload.value()
        assert health_check_result_problem(payload) is None, payload
        return payload

    def results_so_far(self) -> list[dict[str, Any]]:
        return [m.payload.value() for m in self.connection.received if isinstance(m, EventOut)]


@pytest.fixture
def make_rig() -> Iterator[Callable[..., Rig]]:
    def make(memory: HealthCheckMemory | None = None, workers: int = 4) -> Rig:
        clock = FakeClock()
        scheduler = FakeScheduler(clock)
        connection = ProbeHandle()
        peers = Peers()
        peers.set(Role.CONNECTION, connection.ref)
        checker = ScriptedChecker()
        memory = memory or HealthCheckMemory()
        ref = HealthCheckActor.start(
            make_ctx(peers, scheduler, clock, child_id="health_checks"),
            checker=checker,
            memory=memory,
            workers=workers,
        )
        return Rig(ref, clock, scheduler, connection, checker, memory, peers)

    yield make
    pykka.ActorRegistry.stop_all(block=True, timeout=5)


def test_checks_run_only_while_connected_on_a_one_second_tick(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.tell(sync(config(check_interval_seconds=3)))
    rig.advance(5)
    assert rig.started() == 0 and rig.checker.calls == []
    rig.tell(LinkStateChanged(connected=True))
    rig.advance(0.5)
    assert rig.started() == 0  # the first tick is one second after connecting
    rig.advance(0.5)
    assert rig.started() == 1
    payload = rig.result()
    assert payload == {
        "container_id": CID,
        "host_id": "host-1",
        "healthy": True,
        "status_code": 200,
        "response_time_ms": 5,
        "timestamp": payload["timestamp"],
    }
    for _ in range(2):
        rig.advance(1)
    assert rig.started() == 1  # 3 s interval
    rig.advance(1)
    assert rig.started() == 2
    rig.result()


def test_disconnect_stops_checks_and_discards_results_in_flight(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.tell(LinkStateChanged(connected=True))
    rig.tell(sync(config()))
    rig.checker.hold(CID)
    rig.advance(1)
    rig.checker.wait_calls(CID, 1)
    rig.tell(LinkStateChanged(connected=False))
    rig.checker.release(CID)
    wait_for(lambda: rig.stat("dropped") == 1, 5, "the late result to be dropped")
    rig.advance(10)
    assert rig.started() == 1 and rig.results_so_far() == []
    assert rig.stat("overdue") == 0  # its deadline passed too, but the loop had ended
    # the loop restarts on the next connection, with the same configs
    rig.tell(LinkStateChanged(connected=True))
    rig.advance(1)
    assert rig.result()["container_id"] == CID


def test_sync_replaces_config_replaces_and_remove_stops(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.tell(LinkStateChanged(connected=True))
    rig.tell(sync(config(), config(container_id=CID2)))
    rig.advance(1)
    assert {rig.result()["container_id"], rig.result()["container_id"]} == {CID, CID2}
    rig.tell(sync(config(container_id=CID2)))
    rig.advance(1)
    assert rig.result()["container_id"] == CID2
    assert rig.started() == 3
    rig.tell(set_check(config(container_id=CID2, url="http://127.0.0.1:1/v2")))
    rig.advance(1)
    rig.result()
    assert rig.checker.calls_for(CID2)[-1].url == "http://127.0.0.1:1/v2"
    rig.tell(RemoveHealthCheck(container_id=CID2))
    rig.advance(3)
    assert rig.started() == 4
    assert rig.connection.received == []
    rig.tell(set_check(config(enabled=False)))
    rig.advance(2)
    assert rig.started() == 4  # disabled checks never run


def test_a_hanging_check_delays_neither_others_nor_the_actor(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.tell(LinkStateChanged(connected=True))
    rig.checker.hold(CID)
    rig.tell(sync(config(timeout_seconds=2), config(container_id=CID2)))
    rig.advance(1)
    rig.checker.wait_calls(CID, 1)
    assert rig.result_for(CID2)["healthy"] is True
    for _ in range(2):
        rig.advance(1)  # CID2 runs every second; the hung CID never overlaps itself
        assert rig.result_for(CID2)["healthy"] is True
    assert len(rig.checker.calls_for(CID)) == 1 and rig.stat("overdue") == 0
    rig.advance(1)  # 2 s timeout + 1 s grace since the start: reported as a timeout
    timeout = rig.result_for(CID)
    assert timeout["healthy"] is False and timeout["error_message"] == "Timeout after 2s"
    assert timeout["response_time_ms"] == 3000 and "status_code" not in timeout
    rig.checker.release(CID)
    wait_for(lambda: rig.stat("dropped") == 1, 5, "the late result to be dropped")
    rig.advance(1)
    rig.checker.wait_calls(CID, 2)  # and it is scheduled again


@pytest.mark.timeout(120)
def test_twenty_slowloris_targets_cannot_starve_a_healthy_check(server: LocalServer) -> None:
    """Real checks, real time: a healthy target beside 20 that trickle their headers forever."""
    server.routes["/ok"] = Route()
    slow = [Slowloris() for _ in range(20)]
    connection = ProbeHandle()
    peers = Peers()
    peers.set(Role.CONNECTION, connection.ref)
    clock = SystemClock()
    scheduler = ThreadScheduler(clock)
    configs = [
        raw_config(s.url(), container_id=f"{n:012x}", timeout_seconds=2, check_interval_seconds=2)
        for n, s in enumerate(slow)
    ]
    configs.append(
        raw_config(server.url("/ok"), container_id=CID, timeout_seconds=2, check_interval_seconds=2)
    )
    ref = HealthCheckActor.start(make_ctx(peers, scheduler, clock, child_id="health_checks"))
    try:
        ref.tell(sync(*configs))
        ref.tell(LinkStateChanged(connected=True))

        def results(cid: str) -> list[dict[str, Any]]:
            return [
                m.payload.value()
                for m in connection.received
                if isinstance(m, EventOut) and m.payload.value()["container_id"] == cid
            ]

        wait_for(lambda: len(results(CID)) >= 5, 30, "five results for the healthy target")
        healthy = results(CID)
        assert all(r["healthy"] for r in healthy), healthy
        wait_for(lambda: all(len(results(f"{n:012x}")) >= 2 for n in range(20)), 30, "slow results")
        for n in range(20):
            for r in results(f"{n:012x}"):
                assert r["error_message"] == "Timeout after 2s", r
                assert 1900 <= r["response_time_ms"] < 3500, r
        assert int(ref.proxy().worker_threads.get(timeout=3)) <= 32
    finally:
        ref.stop()
        scheduler.stop()
        for s in slow:
            s.stop()
        pykka.ActorRegistry.stop_all(block=True, timeout=5)


def test_a_check_waiting_for_a_worker_is_not_reported_as_timed_out(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(workers=1)
    rig.tell(LinkStateChanged(connected=True))
    rig.checker.hold(CID)
    rig.tell(sync(config(timeout_seconds=2), config(container_id=CID2, timeout_seconds=2)))
    rig.advance(1)
    rig.checker.wait_calls(CID, 1)  # CID holds the only worker; CID2 waits for it
    for _ in range(3):
        rig.advance(1)
    stuck = rig.result_for(CID)  # its own deadline passed: reported
    assert stuck["error_message"] == "Timeout after 2s"
    assert rig.stat("overdue") == 1 and rig.checker.calls_for(CID2) == []
    rig.checker.release(CID)  # the worker is free: CID2 runs now, and is healthy
    assert rig.result_for(CID2)["healthy"] is True


def test_a_restarted_actor_resumes_from_memory(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.tell(LinkStateChanged(connected=True))
    rig.tell(sync(config()))
    rig.ref.stop()
    again = make_rig(memory=rig.memory)
    again.advance(1)
    assert again.result()["container_id"] == CID


def test_the_actor_logs_no_secrets(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig()
    with caplog.at_level(logging.DEBUG):
        rig.tell(LinkStateChanged(connected=True))
        rig.tell(
            sync(
                raw_config(
                    "http://user:" + SECRET_PASSWORD + "@127.0.0.1/h?token=" + SECRET_TOKEN,
                    headers_json=json.dumps({"X-Api-Key": SECRET_HEADER}),
                    auth_config_json=json.dumps({"type": "bearer", "token": SECRET_TOKEN}),
                )
            )
        )
        rig.advance(1)
        rig.result()
    text = caplog.text
    assert CID in text
    for secret in (SECRET_PASSWORD, SECRET_TOKEN, SECRET_HEADER):
        assert secret not in text


# ================================================================================================
# end to end: the real agent, the strict FakeHub, real HTTP servers


def hub_results(hub: FakeHub, cid: str | None = None) -> list[dict[str, Any]]:
    return [
        e["payload"]
        for e in hub.events
        if e.get("command") == "health_check_result"
        and (cid is None or e["payload"].get("container_id") == cid)
    ]


def test_e2e_sync_after_auth_then_config_and_remove(
    tmp_path: Path, dockerd: PrivateDockerd, server: LocalServer
) -> None:
    server.routes["/ok"] = Route()
    server.routes["/bad"] = Route(statuses=[503])
    hub = FakeHub().start()
    hub.add_registration_token(REGISTRATION_TOKEN)
    without_host = {k: v for k, v in raw_config(server.url("/ok")).items() if k != "host_id"}
    hub.set_health_checks(None, [without_host])  # the hub fills in the agent's host_id
    try:
        with running_agent(tmp_path / "data", dockerd.base_url, hub=hub):
            record = hub.wait_registered()
            assert hub.sent[1]["type"] == "health_check_configs_sync"  # right after auth
            first = hub.wait_event(
                lambda e: (
                    e["command"] == "health_check_result" and e["payload"]["container_id"] == CID
                )
            )["payload"]
            assert first["healthy"] is True and first["status_code"] == 200
            assert first["host_id"] == record.host_id
            for bad_frame in (  # logged and ignored: no reply, no crash, no violation
                {"type": "health_check_config", "payload": raw_config(headers_json="{x")},
                {"type": "health_check_configs_sync", "payload": {"configs": "nope"}},
                {"type": "health_check_config_remove", "payload": None},
            ):
                hub.send_raw(json.dumps(bad_frame))
            hub.send_raw(
                json.dumps(
                    {
                        "type": "health_check_config",
                        "payload": raw_config(
                            server.url("/bad"), container_id=CID2, host_id=record.host_id
                        ),
                    }
                )
            )
            bad = hub.wait_event(
                lambda e: e["payload"]["container_id"] == CID2 and not e["payload"]["healthy"]
            )["payload"]
            assert bad["status_code"] == 503 and bad["error_message"] == "Status 503"
            hub.send_raw(
                json.dumps(
                    {"type": "health_check_config_remove", "payload": {"container_id": CID2}}
                )
            )
            # once the removal is in effect (within a tick), /bad gets no more requests
            server.wait_requests("/ok", len(server.requests_to("/ok")) + 2)
            settled = len(server.requests_to("/bad"))
            server.wait_requests("/ok", len(server.requests_to("/ok")) + 3)
            assert len(server.requests_to("/bad")) == settled
            assert len(hub_results(hub, CID2)) <= settled
            hub.assert_clean()
    finally:
        hub.stop()


def test_e2e_disconnect_stops_results_and_drops_those_in_flight(
    tmp_path: Path, dockerd: PrivateDockerd, server: LocalServer
) -> None:
    # every request takes 1.5 s; the first is answered 503, every later one 200
    hub = FakeHub().start()
    hub.add_registration_token(REGISTRATION_TOKEN)
    slow = LocalServer()
    slow.routes["/slow"] = Route(statuses=[503, 200], delay=1.5)
    hub.set_health_checks(
        None, [raw_config(slow.url("/slow"), timeout_seconds=5, check_interval_seconds=60)]
    )
    try:
        with running_agent(tmp_path / "data", dockerd.base_url, hub=hub):
            hub.wait_registered()
            slow.wait_requests("/slow", 1)  # the check is in flight ...
            connections = hub.connection_count
            hub.refuse(True)
            hub.drop()  # ... when the link goes down
            slow.wait_finished("/slow")  # its 503 is produced while disconnected
            hub.wait_connections(connections + 1)  # the agent has tried again meanwhile
            hub.refuse(False)
            hub.wait_registered(count=2)
            fresh = hub.wait_event(lambda e: e["command"] == "health_check_result")["payload"]
            assert fresh["healthy"] is True and fresh["status_code"] == 200
            assert all(r.get("status_code") != 503 for r in hub_results(hub))
            hub.assert_clean()
    finally:
        slow.stop()
        hub.stop()


def test_e2e_checks_survive_a_crash_of_the_actor(
    tmp_path: Path, dockerd: PrivateDockerd, server: LocalServer
) -> None:
    server.routes["/ok"] = Route()
    hub = FakeHub().start()
    hub.add_registration_token(REGISTRATION_TOKEN)
    hub.set_health_checks(None, [raw_config(server.url("/ok"))])
    try:
        with running_agent(tmp_path / "data", dockerd.base_url, hub=hub) as agent:
            hub.wait_registered()
            hub.wait_event(lambda e: e["command"] == "health_check_result")
            agent.crash(Role.HEALTH_CHECKS)
            count = len(hub_results(hub))
            hub.wait_until(lambda: len(hub_results(hub)) >= count + 2, 10, "results after crash")
            assert hub.connection_count == 1  # no reconnect (that would resend the configs)
            hub.assert_clean()
    finally:
        hub.stop()
