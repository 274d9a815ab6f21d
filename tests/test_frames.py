"""Inbound frame limits (PROTOCOL §1.3): the real WebSocketLink against a raw server on 127.0.0.1.

The server speaks RFC 6455 by hand, so it can send what no library would: a header announcing
more than 16 MiB and then nothing, a message in 100,000 fragments, invalid UTF-8, an oversized
control frame. Whatever it sends, the link answers with bounded work: a frame or message over
the backend's own 16 MiB limit is refused from its header (or as soon as the fragments exceed
it), the link is closed with 1009 and the actor reconnects; nothing is buffered first.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.base import SystemClock
from actors.link.websocket import MAX_MESSAGE_BYTES, LinkSettings, WebSocketLink
from messages.connection import FrameReceived, LinkOpened, PongReceived, ReaderStopped
from tests.support.agent_harness import running_agent
from tests.support.daemon import PrivateDockerd
from tests.support.fakes import ProbeHandle

MIB = 1024 * 1024
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def header(opcode: int, length: int, *, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return bytes([first, length])
    if length < 1 << 16:
        return bytes([first, 126]) + struct.pack("!H", length)
    return bytes([first, 127]) + struct.pack("!Q", length)


class RawServer:
    """Accepts one WebSocket client, reads its ``register`` frame, then runs ``script(conn)``."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conn: socket.socket | None = None
        self.ready = threading.Event()
        self.closes: list[int] = []
        self.closed = threading.Event()
        self.eof = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="raw-ws", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/agent/ws"

    def _accept(self) -> None:
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
        accept = base64.b64encode(hashlib.sha1(key + GUID.encode()).digest()).decode()
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
        )
        self._read_frame()  # register
        self.ready.set()
        with contextlib.suppress(OSError):
            while True:  # what the client sends back: its close frame, if any
                opcode, payload = self._read_frame()
                if opcode == 0x8:
                    self.closes.append(struct.unpack("!H", payload[:2])[0] if payload else 1005)
                    self.closed.set()
        self.eof.set()  # the client closed its socket

    def _exactly(self, n: int) -> bytes:
        assert self.conn is not None
        out = b""
        while len(out) < n:
            chunk = self.conn.recv(n - len(out))
            if not chunk:
                raise OSError("client went away")
            out += chunk
        return out

    def _read_frame(self) -> tuple[int, bytes]:
        b1, b2 = self._exactly(2)
        length = b2 & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._exactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._exactly(8))[0]
        mask = self._exactly(4) if b2 & 0x80 else b"\0\0\0\0"
        data = self._exactly(length)
        return b1 & 0x0F, bytes(c ^ mask[i % 4] for i, c in enumerate(data))

    def send(self, data: bytes) -> None:
        assert self.conn is not None
        self.conn.sendall(data)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.shutdown(socket.SHUT_RDWR)
            self.conn.close()
        self._thread.join(5)


@pytest.fixture
def link() -> Iterator[tuple[RawServer, WebSocketLink, ProbeHandle]]:
    server = RawServer()
    probe = ProbeHandle()
    ws_link = WebSocketLink(
        LinkSettings(url=server.url, dial_timeout=5),
        1,
        '{"type":"register"}',
        probe.ref,
        SystemClock(),
    )
    ws_link.start()
    probe.expect(LinkOpened, timeout=5)
    assert server.ready.wait(5)
    yield server, ws_link, probe
    ws_link.close()
    server.stop()
    probe.ref.stop()


def stopped(probe: ProbeHandle, timeout: float = 5) -> str:
    return probe.expect(ReaderStopped, timeout=timeout).reason


def text_frame(payload: bytes) -> bytes:
    return header(0x1, len(payload)) + payload


def close_frame(code: int, reason: bytes) -> bytes:
    payload = struct.pack("!H", code) + reason
    return header(0x8, len(payload)) + payload


def test_a_pong_carries_its_number_and_when_it_was_read(
    link: tuple[RawServer, WebSocketLink, ProbeHandle],
) -> None:
    """When matters: a pong confirms only once the link has outlived it (delivery.py)."""
    server, _, probe = link
    before = time.monotonic()
    server.send(header(0xA, 2) + b"17")
    pong = probe.expect(PongReceived, timeout=5)
    assert pong.ack == 17 and pong.at is not None and before <= pong.at <= time.monotonic()


@pytest.mark.parametrize(
    ("reason", "echoed"), [(b"agent hand-over", True), (b"New connection established", False)]
)
def test_only_the_echo_of_our_own_close_frame_counts_as_one(
    link: tuple[RawServer, WebSocketLink, ProbeHandle], reason: bytes, echoed: bool
) -> None:
    """After our hand-over close, a close the backend sent of its own accord (the new agent
    superseding us) means it stopped reading: it is no echo and confirms nothing."""
    server, ws_link, probe = link
    ws_link.finish()
    assert server.closed.wait(5) and server.closes == [1000]
    before = time.monotonic()
    server.send(close_frame(1000, reason))
    end = probe.expect(ReaderStopped, timeout=5)
    assert end.echoed is echoed and end.reason == f"closed by server: 1000 {reason.decode()}"
    assert end.at is not None and before <= end.at <= time.monotonic()
    assert ws_link.ended_at == end.at


def test_a_frame_over_16_mib_is_refused_from_its_header(
    link: tuple[RawServer, WebSocketLink, ProbeHandle], caplog: pytest.LogCaptureFixture
) -> None:
    server, ws_link, probe = link
    server.send(header(0x1, 200 * MIB))  # and never a byte of the payload
    reason = stopped(probe)
    assert "209715200 bytes" in reason and "16 MiB" in reason, reason
    assert server.closed.wait(5) and server.closes == [1009]
    assert "over the 16 MiB limit" in caplog.text
    assert not [m for m in probe.received if isinstance(m, FrameReceived)]
    ws_link.close()  # what the actor does next: the socket itself is closed, not left open
    assert server.eof.wait(2)


def test_fragments_adding_up_to_more_than_16_mib_are_refused(
    link: tuple[RawServer, WebSocketLink, ProbeHandle],
) -> None:
    server, _, probe = link
    part = b"x" * (6 * MIB)
    server.send(header(0x1, len(part), fin=False) + part)
    server.send(header(0x0, len(part), fin=False) + part)
    server.send(header(0x0, len(part), fin=True) + part)  # 18 MiB in all
    reason = stopped(probe)
    assert "message" in reason and "16 MiB" in reason, reason
    assert server.closes == [1009] or (server.closed.wait(5) and server.closes == [1009])
    assert not [m for m in probe.received if isinstance(m, FrameReceived)]


def test_a_message_in_100000_fragments_costs_linear_work(
    link: tuple[RawServer, WebSocketLink, ProbeHandle],
) -> None:
    server, _, probe = link
    body = json.dumps({"type": "command", "command": "list_containers", "pad": "y" * 1_000_000})
    pieces = [body[i : i + 10].encode() for i in range(0, len(body), 10)]
    assert len(pieces) >= 100_000
    chunks = [header(0x1 if n == 0 else 0x0, len(p), fin=n == len(pieces) - 1) + p
              for n, p in enumerate(pieces)]  # fmt: skip
    server.send(b"".join(chunks))
    frame = probe.expect(FrameReceived, timeout=10)  # quadratic reassembly would take minutes
    assert frame.data == body


def test_a_frame_just_under_the_limit_is_delivered(
    link: tuple[RawServer, WebSocketLink, ProbeHandle],
) -> None:
    server, _, probe = link
    body = '{"type":"noop","pad":"' + "é" * ((MAX_MESSAGE_BYTES - 64) // 2) + '"}'
    assert len(body.encode()) <= MAX_MESSAGE_BYTES
    server.send(text_frame(body.encode()))
    assert probe.expect(FrameReceived, timeout=30).data == body


def test_utf8_is_checked_by_pythons_codec_not_by_websocket_clients_validator(
    link: tuple[RawServer, WebSocketLink, ProbeHandle], monkeypatch: pytest.MonkeyPatch
) -> None:
    """websocket-client's own validator is pure Python (~0.8 s/MB here): a 16 MiB frame would
    hold the reader for seconds, and with it every other request. It must never run."""
    import websocket._abnf

    calls: list[int] = []
    monkeypatch.setattr(websocket._abnf, "validate_utf8", lambda data: calls.append(len(data)))
    server, _, probe = link
    body = '{"type":"noop","pad":"' + "é" * 4096 + '"}'
    server.send(text_frame(body.encode()))
    assert probe.expect(FrameReceived, timeout=10).data == body
    server.send(text_frame(b'{"type":"x","v":"\xff"}'))
    assert "UTF-8" in stopped(probe)  # still refused, by the codec
    assert calls == []


def test_invalid_utf8_closes_the_link_with_1007(
    link: tuple[RawServer, WebSocketLink, ProbeHandle],
) -> None:
    server, _, probe = link
    server.send(text_frame(b'{"type":"x","v":"\xff\xfe"}'))
    reason = stopped(probe)
    assert "UTF-8" in reason, reason
    assert server.closed.wait(5) and server.closes == [1007]


def test_an_oversized_control_frame_is_refused_from_its_header(
    link: tuple[RawServer, WebSocketLink, ProbeHandle],
) -> None:
    server, _, probe = link
    server.send(header(0x9, 10 * MIB))  # a ping may carry at most 125 bytes
    reason = stopped(probe)
    assert "control frame" in reason, reason


# --- the real agent and the strict hub ----------------------------------------------------------


def test_an_oversized_frame_costs_a_reconnect_not_the_agent(
    tmp_path: Path, dockerd: PrivateDockerd, caplog: pytest.LogCaptureFixture
) -> None:
    with running_agent(tmp_path / "data", dockerd.base_url) as agent:
        hub = agent.hub
        hub.wait_registered()
        with contextlib.suppress(ConnectionError):  # the agent hangs up mid-frame: 1009
            hub.send_raw(json.dumps({"type": "command", "id": "big", "pad": "z" * (17 * MIB)}))
        hub.wait_registered(count=2)  # dropped with 1009, then registered again at once
        assert hub.command("list_containers").ok
        assert "over the 16 MiB limit" in caplog.text
        assert agent.supervisor.exit_code is None


def test_payload_helpers_are_sane() -> None:
    assert header(0x1, 5) == b"\x81\x05"
    assert header(0x2, 300)[:2] == b"\x82\x7e"
    assert header(0x1, 70_000, fin=False)[:2] == b"\x01\x7f"
    assert MAX_MESSAGE_BYTES == 16 * MIB
