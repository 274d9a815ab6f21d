"""The optional second WebSocket: container stats to the stats service (PROTOCOL §1.5).

:class:`IngestLink` owns two threads: ``StatsIngest-writer`` dials (Bearer token), drains a
256-entry queue into the socket and reconnects with its own backoff (1 s doubling to 30 s, never
reset, like the Go agent); ``StatsIngest-reader`` only reads, to notice a close. :meth:`offer`
never blocks: when the queue is full the sample is dropped. Nothing here touches the control
connection, so a dead or slow stats service cannot delay or break it.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading

import websocket

from actors.link.websocket import LinkSettings, control_url_for_log
from actors.runtime.backoff import Backoff
from actors.runtime.threads import Guarded, HelperThread
from messages.common import Secret

log = logging.getLogger(__name__)

INGEST_PATH = "/api/stats/ws/ingest"


def ingest_url(dockmon_url: str) -> str:
    """§1.5: the control socket's scheme rewrite, trailing '/' stripped, + the ingest path."""
    scheme, rest = dockmon_url.split(":", 1)
    scheme = {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme.lower())
    return f"{scheme}:{rest.rstrip('/')}{INGEST_PATH}"


class IngestLink:
    def __init__(
        self,
        settings: LinkSettings,
        token: Secret,
        *,
        queue_size: int = 256,
        backoff: tuple[float, float] = (1.0, 30.0),
    ) -> None:
        """``settings.url`` is the ingest URL; TLS and proxy options are the control socket's."""
        self._settings = settings
        self._token = token
        self._queue: queue.Queue[str] = queue.Queue(maxsize=queue_size)
        self._backoff = Backoff(*backoff, jitter=False)  # never reset (§1.5)
        # closed by stop(); each session's socket is adopted, then dropped when it ends
        self._ws: Guarded[websocket.WebSocket] = Guarded(dispose=_abort)
        self._writer = HelperThread("StatsIngest-writer", self._run)
        self._reader: HelperThread | None = None
        self.connected = threading.Event()
        self.dropped = 0
        self.sent = 0
        self.connects = 0
        self.failures = 0
        self.last_error = ""

    def start(self) -> None:
        log.info("stats ingest enabled: %s", control_url_for_log(self._settings.url))
        self._writer.start()

    def offer(self, text: str) -> bool:
        """Queue one sample; False (and counted) if the queue is full. Never blocks."""
        try:
            self._queue.put_nowait(text)
            return True
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "stats ingest queue full: dropped %d samples so far (%s)",
                    self.dropped,
                    "connected" if self.connected.is_set() else "not connected",
                )
            return False

    def stop(self, timeout: float = 2.0) -> None:
        self._ws.close()  # aborts the current socket, if any
        for thread in (self._writer, self._reader):
            if thread is not None and thread.alive:
                thread.join(timeout)

    # --- threads ------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._ws.closed:
            reason = self._session()
            if self._ws.closed:
                return
            self.failures += 1
            self.last_error = reason
            delay = self._backoff.next_delay()
            at_cap = delay >= self._backoff.maximum
            level = logging.WARNING if self.failures == 1 or at_cap else logging.INFO
            log.log(level, "stats ingest connection: %s; retrying in %.0fs", reason, delay)
            if self._ws.wait_closed(delay):
                return

    def _session(self) -> str:
        """One connection: dial, pump the queue until it fails. Returns why it ended."""
        settings = self._settings
        ws = websocket.WebSocket(sslopt=settings.sslopt(), enable_multithread=True)
        try:
            ws.connect(
                settings.url,
                header=[f"Authorization: Bearer {self._token.reveal()}"],
                **settings.connect_options(),
            )
        except websocket.WebSocketBadStatusException as exc:
            return f"handshake rejected: HTTP {exc.status_code}"
        except (OSError, websocket.WebSocketException, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if not self._ws.adopt(ws):  # stopped while dialing: aborted, never used
            return "stopping"
        ws.settimeout(settings.write_deadline)
        closed = threading.Event()
        reasons: list[str] = []
        reader = HelperThread("StatsIngest-reader", lambda: self._read(ws, closed, reasons))
        self._reader = reader
        reader.start()
        self.connects += 1
        self.connected.set()
        log.info("stats ingest connected")
        try:
            while not closed.is_set() and not self._ws.closed:
                try:
                    text = self._queue.get(timeout=0.5)
                except queue.Empty:
                    continue
                try:
                    ws.send(text)
                    self.sent += 1
                except (OSError, websocket.WebSocketException) as exc:
                    return f"send failed: {type(exc).__name__}: {exc}"
            return reasons[0] if reasons else "closed"
        finally:
            self.connected.clear()
            self._ws.drop(ws)
            closed.set()
            reader.join(2.0, warn=False)

    @staticmethod
    def _read(ws: websocket.WebSocket, closed: threading.Event, reasons: list[str]) -> None:
        """The server sends nothing; reading answers its pings and notices a close."""
        try:
            while not closed.is_set():
                try:
                    opcode, frame = ws.recv_data_frame(True)
                except websocket.WebSocketTimeoutException:
                    continue
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    data = frame.data
                    code = int.from_bytes(data[:2], "big") if len(data) >= 2 else ""
                    reasons.append(f"closed by server: {code}".rstrip())
                    return
        except (OSError, websocket.WebSocketException, ValueError) as exc:
            reasons.append(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        finally:
            closed.set()


def _abort(ws: websocket.WebSocket) -> None:
    ws.abort()


def ingest_settings(control: LinkSettings, dockmon_url: str) -> LinkSettings:
    """The control socket's TLS/proxy settings, pointed at the ingest URL."""
    return dataclasses.replace(control, url=ingest_url(dockmon_url))
