"""Helper threads written once (actors/runtime/threads.py), and the close race in their owners.

The close race: the owner closes while its helper thread is still obtaining the resource
(dialing, attaching). The resource obtained afterwards must be closed by the thread at once
and never read. Each race here is made deterministic with events: the thread is held inside
"obtain" until the owner has closed. The EventStreamer's race is in test_actor_lifecycle.py,
the ShellSession's in test_shell.py; the WebSocketLink's and the IngestLink's run against a
raw server on 127.0.0.1 that holds the WebSocket handshake until the test lets it go.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from actors.base import SystemClock
from actors.link.ingest import IngestLink
from actors.link.websocket import LinkSettings, WebSocketLink
from actors.runtime.threads import Guarded, Handoff, HelperThread, tell_or_close, tell_quietly
from messages.common import Secret
from messages.connection import LinkOpened, ReaderStopped
from tests.support.fakes import ProbeHandle
from tests.support.waiting import wait_for


class Resource:
    """Records what was done to it, and on which thread."""

    def __init__(self, name: str = "r") -> None:
        self.name = name
        self.woken: list[str] = []
        self.disposed: list[str] = []
        self.read = False

    def wake(self) -> None:
        self.woken.append(threading.current_thread().name)

    def dispose(self) -> None:
        self.disposed.append(threading.current_thread().name)


def guarded(*, wake: bool = True) -> Guarded[Resource]:
    return Guarded(dispose=Resource.dispose, wake=Resource.wake if wake else None)


# --- Guarded ---------------------------------------------------------------------------------


def test_an_adopted_resource_is_woken_by_close_and_disposed_once_after() -> None:
    g = guarded()
    r = Resource()
    assert g.adopt(r) and g.resource is r and not g.closed
    assert g.close() is True
    assert g.closed and r.woken == ["MainThread"] and r.disposed == []
    assert g.close() is False  # idempotent: woken once
    g.dispose()
    g.dispose()
    assert r.woken == ["MainThread"] and r.disposed == ["MainThread"] and g.resource is None


def test_without_wake_close_disposes_at_once_and_drop_does_not_dispose_again() -> None:
    g = guarded(wake=False)
    r = Resource()
    assert g.adopt(r)
    g.close()
    assert r.disposed == ["MainThread"] and g.resource is None
    g.drop(r)
    g.dispose()
    assert r.disposed == ["MainThread"]


def test_the_close_race_the_thread_disposes_what_it_obtained_after_close_and_never_reads_it() -> (
    None
):
    g = guarded()
    obtaining, closed = threading.Event(), threading.Event()
    outcome: list[bool] = []
    r = Resource()

    def helper() -> None:
        obtaining.set()
        assert closed.wait(5)  # "connect()" returns only after the owner closed
        if g.adopt(r):
            r.read = True
        outcome.append(g.resource is not None)

    thread = HelperThread("race-helper", helper)
    thread.start()
    assert obtaining.wait(5)
    assert g.close() is True  # nothing to wake yet
    closed.set()
    assert thread.join(5)
    assert not r.read, "a resource obtained after close was used"
    assert r.disposed == ["race-helper"], "the thread must dispose of it itself, at once"
    assert r.woken == [] and outcome == [False] and g.resource is None
    g.dispose()
    assert r.disposed == ["race-helper"]  # exactly once


def _adopt_at(start: threading.Barrier, g: Guarded[Resource], r: Resource) -> None:
    start.wait(5)
    g.adopt(r)


def test_every_resource_is_disposed_exactly_once_whoever_wins_the_race() -> None:
    for _ in range(300):
        g = guarded(wake=False)
        r = Resource()
        start = threading.Barrier(2)
        thread = HelperThread("race-helper", functools.partial(_adopt_at, start, g, r))
        thread.start()
        start.wait(5)
        g.close()
        assert thread.join(5)
        g.dispose()
        assert len(r.disposed) == 1, r.disposed


def test_drop_releases_one_attempt_and_the_guard_takes_the_next() -> None:
    g = guarded()
    first, second = Resource("1"), Resource("2")
    assert g.adopt(first)
    g.drop(first)
    assert first.disposed == ["MainThread"] and g.resource is None and not g.closed
    assert g.adopt(second)
    g.drop(first)  # not the current one: nothing happens
    assert second.disposed == [] and g.resource is second


def test_wake_and_dispose_failures_are_swallowed() -> None:
    def boom(_: object) -> None:
        raise OSError("already closed")

    g: Guarded[object] = Guarded(dispose=boom, wake=boom)
    assert g.adopt(object())
    assert g.close()
    g.dispose()
    late: Guarded[object] = Guarded(dispose=boom)
    assert late.close()  # closing an empty guard is fine too
    assert late.adopt(object()) is False


def test_wait_closed_is_the_threads_interruptible_backoff() -> None:
    g = guarded()
    assert g.wait_closed(0) is False
    waiter_done = threading.Event()
    result: list[bool] = []

    def waiter() -> None:
        result.append(g.wait_closed(30))
        waiter_done.set()

    thread = HelperThread("backoff-waiter", waiter)
    thread.start()
    g.close()
    assert waiter_done.wait(5) and result == [True]
    assert thread.join(5)


# --- HelperThread, Handoff, telling the owner ------------------------------------------------


def test_helper_thread_join(caplog: pytest.LogCaptureFixture) -> None:
    never = HelperThread("never-started", lambda: None)
    assert never.join(0.01) and not never.started and not never.alive

    release = threading.Event()
    joined_itself: list[bool] = []
    box: list[HelperThread] = []

    def body() -> None:
        joined_itself.append(box[0].join(1))  # a thread never joins itself (no deadlock)
        release.wait(10)

    stuck = HelperThread("stuck-helper", body)
    box.append(stuck)
    assert stuck.name == "stuck-helper"
    stuck.start()
    wait_for(lambda: joined_itself, 5, "the thread to try joining itself")
    assert joined_itself == [False]
    with caplog.at_level(logging.WARNING):
        assert stuck.join(0.01) is False
    assert "stuck-helper did not stop within 0.0s" in caplog.text
    caplog.clear()
    assert stuck.join(0.01, warn=False) is False and not caplog.text
    release.set()
    assert stuck.join(5) and not stuck.alive


def test_handoff_is_fifo_up_to_the_stop_mark() -> None:
    h: Handoff[str] = Handoff()
    h.put("a")
    h.put("b")
    h.stop()
    h.put("after")
    assert h.qsize() == 4
    assert [h.get(), h.get(), h.get()] == ["a", "b", None]


class _Sink(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


def test_a_dead_owner_closes_the_resource_and_the_thread_exits() -> None:
    ref = _Sink.start()
    g = guarded()
    r = Resource()
    assert g.adopt(r)
    assert tell_or_close(ref, "item", g) and not g.closed
    assert tell_quietly(ref, "last word")
    ref.stop()
    assert tell_or_close(ref, "item", g) is False
    assert g.closed and r.woken == ["MainThread"]
    assert tell_quietly(ref, "last word") is False


# --- the close race in WebSocketLink and IngestLink ----------------------------------------


class HeldHandshake:
    """A TCP server on 127.0.0.1 that reads one HTTP upgrade request and answers it only when
    ``release`` is set; then it records every byte the client sends until EOF."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requested = threading.Event()
        self.release = threading.Event()
        self.eof = threading.Event()
        self.after_handshake = b""
        self.conn: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, name="held-handshake", daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self.sock.accept()
            self.conn = conn
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            key = next(
                line.split(b":", 1)[1].strip()
                for line in request.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            self.requested.set()
            assert self.release.wait(10)
            guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
            accept = base64.b64encode(hashlib.sha1(key + guid).digest()).decode()
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\n" + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
            )
            conn.settimeout(10)
            while chunk := conn.recv(65536):
                self.after_handshake += chunk
        self.eof.set()

    def stop(self) -> None:
        self.release.set()
        self.sock.close()
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.close()
        self._thread.join(5)


@pytest.fixture
def held() -> Iterator[HeldHandshake]:
    server = HeldHandshake()
    yield server
    server.stop()


def test_websocket_link_closed_while_dialing_shuts_the_late_socket_and_never_registers(
    held: HeldHandshake,
) -> None:
    probe = ProbeHandle()
    link = WebSocketLink(
        LinkSettings(url=held.url("/api/agent/ws"), dial_timeout=10),
        7,
        '{"type":"register"}',
        probe.ref,
        SystemClock(),
    )
    try:
        link.start()
        assert held.requested.wait(5)  # the reader is inside connect()
        link.close_from_thread()  # the owner closes now
        held.release.set()  # ... and only then does the handshake complete
        stopped = probe.expect(ReaderStopped, timeout=5)
        assert (stopped.generation, stopped.reason) == (7, "closed by agent")
        assert held.eof.wait(5), "the socket obtained after close was left open"
        assert held.after_handshake == b"", "the link wrote to a socket its owner had closed"
        assert not [m for m in probe.received if isinstance(m, LinkOpened)]
    finally:
        link.close()
        probe.ref.stop()


def test_ingest_link_stopped_while_dialing_aborts_the_late_socket_and_sends_nothing(
    held: HeldHandshake,
) -> None:
    ingest = IngestLink(
        LinkSettings(url=held.url("/api/stats/ws/ingest"), dial_timeout=10), Secret("tok")
    )
    ingest.offer('{"sample":1}')
    ingest.start()
    assert held.requested.wait(5)  # the writer is inside connect()
    stopper = HelperThread("ingest-stopper", lambda: ingest.stop(timeout=10))
    stopper.start()
    wait_for(lambda: ingest._ws.closed, 5, "stop() to close the link")
    held.release.set()
    assert stopper.join(10)
    assert held.eof.wait(5), "the socket obtained after stop was left open"
    assert held.after_handshake == b"", "a sample went to a socket the link had stopped"
    assert ingest.connects == 0 and ingest.sent == 0 and not ingest.connected.is_set()
