"""The transport to DockMon: one WebSocket per connection attempt, with its two helper threads.

:class:`WebSocketLink` owns the socket: the reader (``ConnectionActor-reader``) dials, sends the
``register`` frame first and tells every frame it reads to its owner (the Connection actor); the
writer (``ConnectionActor-writer``) sends queued frames, so a backend that stops reading cannot
stall the owner. Frames over the backend's own 16 MiB limit are refused from their header (issue
10.6). :class:`LinkSettings` is how to dial (TLS, proxies, deadlines). The stats ingest link,
the doctor and the test fakes use these without the actor (reconnect delays:
:class:`actors.runtime.backoff.Backoff`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pykka
import websocket

from actors.base import Clock
from actors.link.frames import client_frame
from actors.runtime.threads import Guarded, Handoff, HelperThread, tell_or_close, tell_quietly
from messages.connection import (
    FrameReceived,
    LinkOpened,
    PongReceived,
    ReaderStopped,
)
from messages.records import record

log = logging.getLogger(__name__)

#: the largest frame or message the backend accepts, and so the largest we read (PROTOCOL §1.3)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def control_url_for_log(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}"


def _tls_context(ca_cert: str | None, insecure_skip_verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca_cert:
        ctx.load_verify_locations(cafile=ca_cert)
    if insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


#: one context per CA setting for every link of the process (an SSLContext is shared safely by
#: the sockets of many threads); a CA file that fails to load is not cached: the next dial retries
_shared_tls_context = functools.lru_cache(maxsize=4)(_tls_context)


@record(kw_only=True)
class LinkSettings:
    url: str
    insecure_skip_verify: bool = False
    ca_cert: str | None = None
    https_proxy: str | None = None
    http_proxy: str | None = None
    no_proxy: str | None = None
    dial_timeout: float = 45.0
    auth_timeout: float = 10.0
    describe_timeout: float = 15.0
    ping_interval: float = 30.0
    dead_after: float = 40.0
    write_deadline: float = 10.0
    outbox_limit: int = 10_000
    #: how long the link must outlive a pong before it confirms the frames before its ping: the
    #: backend's WebSocket layer answers a ping at once, its handler may still be reading the
    #: frames before it (uvicorn queues up to 32), and a close then discards them (delivery.py)
    confirm_margin: float = 1.0

    def sslopt(self) -> dict[str, Any]:
        """websocket-client's TLS options. A ``wss://`` link gets the process's one context for
        its CA settings, built at the first dial and reused: building one loads the system's CA
        bundle (53 ms on the bench machine), and one built at every dial of a reconnect storm
        left 12 MB more heap behind (bench/run.py, the storm row). A ``ws://`` link never uses
        one."""
        if urlsplit(self.url).scheme != "wss":
            return {}
        return {"context": _shared_tls_context(self.ca_cert, self.insecure_skip_verify)}

    def ssl_context(self) -> ssl.SSLContext:
        """A new context (the doctor checks the CA file as it is now)."""
        return _tls_context(self.ca_cert, self.insecure_skip_verify)

    def connect_options(self) -> dict[str, Any]:
        parts = urlsplit(self.url)
        options: dict[str, Any] = {"timeout": self.dial_timeout, "suppress_origin": True}
        proxy = self.https_proxy if parts.scheme == "wss" else self.http_proxy
        no_proxy = [h.strip() for h in (self.no_proxy or "").split(",") if h.strip()]
        if proxy:
            p = urlsplit(proxy)
            options.update(
                http_proxy_host=p.hostname,
                http_proxy_port=p.port or (443 if p.scheme == "https" else 80),
                proxy_type="http",
                http_no_proxy=no_proxy or None,
            )
            if p.username:
                options["http_proxy_auth"] = (p.username, p.password or "")
        else:
            # An explicit empty no_proxy list would still let websocket-client read the process
            # environment; route everything direct by naming the target host.
            options["http_no_proxy"] = [parts.hostname or "*"]
        return options


@record
class _Ping:
    payload: bytes


class _Finish:
    """Send a close frame after everything queued before it."""


_FINISH = _Finish()
#: the close frame a hand-over sends (PROTOCOL §7): the backend's echo of it is this same frame
HAND_OVER_CLOSE = (websocket.STATUS_NORMAL, "agent hand-over")
#: frames up to this many characters may be written directly (send_direct): framing 1 MiB
#: (encode, mask, join) takes about 60 us on a heap buffer (actors/runtime/memory.py), less than
#: the hand-off to the writer it saves; bigger ones go through the writer, off the actor's thread
DIRECT_LIMIT = 1024 * 1024


@record
class _Rest:
    """The bytes a direct send left unsent: the writer sends them before anything else."""

    data: bytes


#: a frame, a frame to confirm (text, its number), a ping, the close, the rest of a direct send
_Outgoing = str | tuple[str, int] | _Ping | _Finish | _Rest


class BurstPings:
    """One confirmation ping per burst of frames, not one per frame (issue 13).

    The writer reports each numbered frame it wrote; once its queue is empty it asks for the
    ping to send: the number of the last frame written, if no ping carried it yet. WebSocket
    frames are read in order, so that one pong confirms the whole burst. No threads, no I/O.
    """

    def __init__(self) -> None:
        self._written = 0  # the number of the last numbered frame written
        self._pinged = 0  # the largest number a ping carried

    def wrote(self, ack: int) -> None:
        self._written = max(self._written, ack)

    def pinged(self, ack: int) -> None:
        """A ping carrying ``ack`` went out (a keepalive, say): it confirms up to there too."""
        self._pinged = max(self._pinged, ack)

    def due(self, *, queue_empty: bool) -> int | None:
        """The number the next ping must carry, now; None while more frames are queued or
        everything written was pinged already."""
        if not queue_empty or self._written <= self._pinged:
            return None
        self._pinged = self._written
        return self._written


class MessageTooBig(websocket.WebSocketProtocolException):
    """A frame, or a fragmented message, over MAX_MESSAGE_BYTES: refused before buffering."""


class _BoundedFrameBuffer(websocket._abnf.frame_buffer):
    """websocket-client's frame reader, refusing a frame from its header: a frame longer than
    the limit (or a control frame longer than RFC 6455's 125 bytes) is never read."""

    def __init__(self, recv: Callable[[int], bytes], limit: int) -> None:
        super().__init__(recv, skip_utf8_validation=True)
        self.limit = limit

    def recv_length(self) -> None:
        super().recv_length()
        length = self.length or 0
        opcode = self.header[4] if self.header else 0
        if opcode & 0x8 and length > 125:
            raise websocket.WebSocketProtocolException(
                f"a control frame of {length} bytes (at most 125 allowed)"
            )
        if length > self.limit:
            self.clear()  # the reader stops here; nothing of it is read
            raise MessageTooBig(f"a frame of {length} bytes")


class _BoundedMessages(websocket._abnf.continuous_frame):
    """Reassembles a fragmented message in linear time (websocket-client concatenates bytes,
    quadratic in the number of fragments) and refuses it once it grows past the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(fire_cont_frame=False, skip_utf8_validation=True)
        self.limit = limit
        self._opcode = 0
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, frame: websocket.ABNF) -> None:
        if not self.recving_frames:  # the first frame of a message
            self._opcode, self._parts, self._size = frame.opcode, [], 0
            if not frame.fin:
                self.recving_frames = frame.opcode
        self._size += len(frame.data)
        if self._size > self.limit:
            self._parts, self.recving_frames = [], None
            raise MessageTooBig(f"a message of more than {self._size} bytes in fragments")
        data = frame.data
        self._parts.append(data.encode("latin-1") if isinstance(data, str) else data)
        if frame.fin:
            self.recving_frames = None

    def extract(self, frame: websocket.ABNF) -> tuple[int, websocket.ABNF]:
        frame.data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts = []
        return self._opcode, frame


class _BoundedWebSocket(websocket.WebSocket):
    """A WebSocket that reads at most ``limit`` bytes per message, and leaves UTF-8 validation
    to Python's codec (websocket-client's pure-Python check costs about 0.8 s per MB)."""

    def __init__(self, limit: int, **kwargs: Any) -> None:
        super().__init__(skip_utf8_validation=True, **kwargs)
        self.frame_buffer = _BoundedFrameBuffer(self._recv, limit)
        self.cont_frame = _BoundedMessages(limit)

    def connect(self, url: str, **options: Any) -> None:
        """websocket-client's ``connect``, typed (its own is unannotated)."""
        websocket.WebSocket.connect(self, url, **options)


class WebSocketLink:
    """One connection attempt: a reader thread and a writer thread around one WebSocket."""

    def __init__(
        self,
        settings: LinkSettings,
        generation: int,
        register_frame: str,
        notify: pykka.ActorRef[Any],
        clock: Clock,
    ) -> None:
        self.generation = generation
        self._settings = settings
        self._register = register_frame
        self._notify = notify
        self._clock = clock
        self._ws: Guarded[websocket.WebSocket] = Guarded(wake=_shut_down, dispose=_close)
        self._outgoing: Handoff[_Outgoing] = Handoff()
        self._busy_since: float | None = None
        self._ended_at: float | None = None  # when the reader met the link's end
        # the direct path (send_direct): the socket is written by one thread at a time (_io),
        # and only while nothing queued is still unsent (_queued, counted under _count)
        self._io = threading.Lock()
        self._count = threading.Lock()
        self._queued = 0
        self._reader = HelperThread("ConnectionActor-reader", self._read)
        self._writer = HelperThread("ConnectionActor-writer", self._write)

    def start(self) -> None:
        self._reader.start()

    def send(self, text: str, ack: int = 0) -> None:
        """Queue a frame; ``ack`` > 0 numbers a frame to confirm: the writer pings once the
        burst it belongs to is written (:class:`BurstPings`)."""
        with self._count:
            self._queued += 1
        self._outgoing.put((text, ack) if ack else text)

    def send_direct(self, text: str, ack: int) -> None:
        """Like :meth:`send`, but when the writer has nothing left to send, write the frame and
        its confirmation ping on the caller's thread at once, with one non-blocking send: no
        hand-off to the writer (issue 13). Whatever the socket does not take at once, or any
        doubt (the writer busy, TLS, an error), goes through the writer as usual, in order;
        so the caller never blocks on a backend that stops reading."""
        ws = self._ws.resource
        sock = ws.sock if ws is not None else None
        if (
            len(text) <= DIRECT_LIMIT
            and ws is not None
            and sock is not None
            and not isinstance(sock, ssl.SSLSocket)  # TLS cannot take MSG_DONTWAIT
            and self._writer.started
            and self._io.acquire(blocking=False)
        ):
            try:
                if self._direct(ws, sock, text, ack):
                    return
            finally:
                self._io.release()
        self.send(text, ack)

    def _direct(self, ws: websocket.WebSocket, sock: socket.socket, text: str, ack: int) -> bool:
        with self._count:
            if self._queued:
                return False  # older frames first
        if not ws.lock.acquire(blocking=False):  # the reader answering a server ping
            return False
        try:
            data = _frame(ws, text, websocket.ABNF.OPCODE_TEXT) + _frame(
                ws, str(ack).encode(), websocket.ABNF.OPCODE_PING
            )
            try:
                sent = sock.send(data, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                return False  # the writer meets the error and closes the link
            if sent < len(data):
                with self._count:
                    self._queued += 1
                self._outgoing.put(_Rest(data[sent:]))  # first in line: nothing else is queued
            return True
        finally:
            ws.lock.release()

    def ping(self, ack: int) -> None:
        """A ping carrying ``ack``: its pong proves every frame sent before it was read."""
        self._outgoing.put(_Ping(str(ack).encode()))

    def finish(self) -> None:
        """Send what is queued, then a close frame (1000); the reader ends on the echo."""
        self._outgoing.put(_FINISH)

    @property
    def ended_at(self) -> float | None:
        """When the reader met the end of the link (a close frame, an error), before it tells
        the owner; None while it reads: the owner may take the link to be alive now."""
        return self._ended_at

    def send_stuck_for(self, now: float) -> float:
        busy = self._busy_since
        return 0.0 if busy is None else now - busy

    def close(self, timeout: float = 2.0) -> None:
        """Abort the socket and join both threads.

        Frames it had not written are not returned: the actor keeps every frame it sent in its
        unconfirmed list until a pong proves it read, and resends those itself.
        """
        self.close_from_thread()
        self._outgoing.stop()
        self._reader.join(timeout)
        if self._writer.alive:
            self._writer.join(timeout)
        self._ws.dispose()  # after the joins: never close the descriptor under a running recv

    def _tell(self, message: Any) -> bool:
        return tell_or_close(self._notify, message, self._ws)

    def close_from_thread(self) -> None:
        """Wake both threads: shut the socket down (websocket-client's ``abort`` does nothing
        once a close frame was sent, and a peer still sending would never notice)."""
        self._ws.close()

    def _read(self) -> None:
        reason = "closed"
        echoed = False
        try:
            ws = _BoundedWebSocket(
                MAX_MESSAGE_BYTES,
                sslopt=self._settings.sslopt(),
                enable_multithread=True,
            )
            ws.connect(self._settings.url, **self._settings.connect_options())
            if not self._ws.adopt(ws):  # closed while dialing: shut down, never read
                return
            ws.settimeout(self._settings.write_deadline)
            ws.send(self._register)  # must be the first frame (PROTOCOL §2.2)
            ws.settimeout(None)  # silence is judged by the actor's clock, not the socket
            if not self._tell(LinkOpened(generation=self.generation)):
                return
            self._writer.start()
            while True:
                opcode, frame = ws.recv_data_frame(True)
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    data, frame.data = frame.data, b""
                    text = data.decode("utf-8") if isinstance(data, bytes) else data
                    del data  # a big frame is held once (as text) while the actor parses it
                    if not self._tell(FrameReceived(generation=self.generation, data=text)):
                        return
                    del text
                elif opcode == websocket.ABNF.OPCODE_BINARY:
                    if not self._tell(FrameReceived(generation=self.generation, data=frame.data)):
                        return
                elif opcode in (websocket.ABNF.OPCODE_PONG, websocket.ABNF.OPCODE_PING):
                    ack = _ack_of(frame.data) if opcode == websocket.ABNF.OPCODE_PONG else None
                    at = self._clock.monotonic()
                    if not self._tell(PongReceived(generation=self.generation, ack=ack, at=at)):
                        return
                elif opcode == websocket.ABNF.OPCODE_CLOSE:
                    self._ended_at = self._clock.monotonic()
                    code, text = _close_reason(frame.data)
                    echoed = (code, text) == HAND_OVER_CLOSE
                    reason = f"closed by server: {code} {text}".rstrip()
                    return
        except MessageTooBig as exc:
            log.error(
                "DockMon sent %s, over the 16 MiB limit (PROTOCOL §1.3); closing the connection "
                "(1009) and reconnecting",
                exc,
            )
            reason = f"refused {exc}: over the 16 MiB limit"
            self._refuse(websocket.STATUS_MESSAGE_TOO_BIG, b"message too big")
        except UnicodeDecodeError as exc:
            log.warning(
                "DockMon sent a text frame that is not UTF-8 (%s); reconnecting", exc.reason
            )
            reason = "a text frame that is not valid UTF-8"
            self._refuse(websocket.STATUS_INVALID_PAYLOAD, b"invalid UTF-8")
        except websocket.WebSocketBadStatusException as exc:
            reason = f"handshake rejected: HTTP {exc.status_code}"
        except (OSError, websocket.WebSocketException, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except Exception as exc:  # a bug must cost a reconnect, never a silent dead reader
            log.exception("ConnectionActor-reader failed unexpectedly")
            reason = f"reader failed: {type(exc).__name__}: {exc}"
        finally:
            if self._ws.closed:
                reason = "closed by agent"
            if self._ended_at is None:
                self._ended_at = self._clock.monotonic()
            self._outgoing.stop()
            stopped = ReaderStopped(
                generation=self.generation, reason=reason, at=self._ended_at, echoed=echoed
            )
            tell_quietly(self._notify, stopped)

    def _refuse(self, code: int, reason: bytes) -> None:
        """Tell the server why we drop the link (bounded: the send may not block for long)."""
        ws = self._ws.resource
        if ws is None:
            return
        with contextlib.suppress(Exception):
            if ws.sock is not None:
                ws.sock.settimeout(1.0)
            ws.send_close(code, reason)

    def _write(self) -> None:
        ws = self._ws.resource
        assert ws is not None
        pings = BurstPings()
        while (item := self._outgoing.get()) is not None:
            if isinstance(item, _Finish):
                with contextlib.suppress(OSError, websocket.WebSocketException):
                    code, text = HAND_OVER_CLOSE
                    ws.send_close(code, text.encode())
                return
            self._busy_since = self._clock.monotonic()
            try:
                with self._io:
                    if isinstance(item, _Ping):
                        ws.ping(item.payload)
                        pings.pinged(_ack_of(item.payload) or 0)
                    elif isinstance(item, tuple):
                        _send_all(ws, _frame(ws, item[0], websocket.ABNF.OPCODE_TEXT))
                        pings.wrote(item[1])
                    elif isinstance(item, _Rest):
                        _send_all(ws, item.data)
                    else:
                        _send_all(ws, _frame(ws, item, websocket.ABNF.OPCODE_TEXT))
                    if isinstance(item, str | tuple | _Rest):
                        with self._count:
                            self._queued -= 1
                    if (ack := pings.due(queue_empty=self._outgoing.empty())) is not None:
                        ws.ping(str(ack).encode())
            except (OSError, websocket.WebSocketException) as exc:
                log.info("send failed: %s", exc)
                self.close_from_thread()
                return
            finally:
                self._busy_since = None


def _frame(ws: websocket.WebSocket, data: str | bytes, opcode: int) -> bytes:
    """One frame's bytes, masked with websocket-client's key hook if one is set."""
    return client_frame(data, opcode, ws.get_mask_key or None)


def _send_all(ws: websocket.WebSocket, data: bytes) -> None:
    """Write ``data`` whole, under websocket-client's send lock (the reader answers pings)."""
    with ws.lock:
        if ws.sock is None:
            raise websocket.WebSocketConnectionClosedException("closed")
        ws.sock.sendall(data)


def _shut_down(ws: websocket.WebSocket) -> None:
    sock = ws.sock
    if sock is not None:
        sock.shutdown(socket.SHUT_RDWR)


def _close(ws: websocket.WebSocket) -> None:
    ws.shutdown()


def frame_bytes(text: str) -> int:
    """The UTF-8 size of a frame, without encoding it when its length alone settles the limit."""
    if len(text) * 4 <= MAX_MESSAGE_BYTES:
        return len(text)  # a lower bound, certainly below the limit
    return len(text.encode("utf-8", "surrogatepass"))


def _ack_of(data: bytes | str) -> int | None:
    raw = data.decode("ascii", "replace") if isinstance(data, bytes) else data
    return int(raw) if raw.isdigit() else None


def _close_reason(data: bytes | str) -> tuple[int | str, str]:
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) >= 2:
        return int.from_bytes(raw[:2], "big"), raw[2:].decode("utf-8", "replace")
    return "", ""


LinkFactory = Callable[[LinkSettings, int, str, pykka.ActorRef[Any], Clock], WebSocketLink]
