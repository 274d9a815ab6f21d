"""The stats streams' loop: one thread, one selector, one HTTP stats stream per container.

Each running container gets its own ``GET /containers/{id}/stats?stream=1`` HTTP connection, as
in the Go agent, but all connections are multiplexed by one selector in one thread
(``StatsActor-streams``) instead of one blocked thread per container. bench/stats_design.py
measured the alternatives (thread per stream, one-shot polling) on dockerd 20.10.
:class:`~actors.telemetry.streams.StatsStreams` starts it with the first stream.

Each stream is a non-blocking socket (:func:`~actors.runtime.docker_client.dial`) and a small
HTTP/1.1 response reader, :class:`Response` (status line, headers, chunked or sized bodies,
newline-delimited JSON), which speaks just enough for Docker's API over ``unix://`` or plain
``tcp://``. It replaced asyncio streams (issue 13): asyncio's import is 1.6 MB, and it kept a
task, a transport, a protocol, a stream reader and their futures per container, small objects
that outlived 200 closed streams in pymalloc arenas. The loop thread never touches actor state:
it calls the ``on_sample`` / ``on_ended`` callbacks, which ``tell`` the actor. With
``on_samples``, the newest sample of every stream is collected and handed over together every
``batch_interval`` seconds instead: one wake-up of the actor per interval, not one per sample
(issue 13; Docker sends one sample a second per stream, so a fraction of that delays nothing).
A stream that delivers several samples within one interval hands over its newest only: that is
a backlog (the agent was stopped or starved while Docker kept sending), its older samples are
stale, and holding them all (200 streams' worth of 20 seconds) left a fragmented heap behind.
With ``poll_pause``, the selector waits that long after each wake-up before it gathers what is
ready, so one wake-up serves the samples of many streams instead of one each.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from actors.runtime.docker_client import api_path, dial
from messages.common import loads

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20  # one stats sample is a few KiB; refuse absurd lines (and headers)
#: how much of an error response's body is read for its message
ERROR_BODY = 4096


class DockerHttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def request_bytes(path: str) -> bytes:
    """The GET a stream sends; ``Connection: close``: the body ends with the connection."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: docker\r\nUser-Agent: dockmon-agent\r\n"
        "Accept: application/json\r\nConnection: close\r\n\r\n"
    ).encode("ascii")


class Response:
    """One HTTP/1.1 response, read as its bytes arrive: :meth:`feed` returns the JSON values of
    the body's complete lines, :meth:`eof` what the last one held. A status other than 200
    raises :class:`DockerHttpError` with Docker's message once its body (or 4 KiB) is in. No
    I/O, no threads."""

    def __init__(self) -> None:
        self.status = 0  # 0 until the head is in
        self.done = False  # the body's framing said it ended (sized, or the last chunk)
        self._raw = bytearray()  # received, not yet de-framed
        self._length: int | None = -1  # bytes left of a sized body; None chunked; -1 to EOF
        self._chunk = 0  # bytes left of the current chunk's data
        self._crlf = False  # the CRLF after a chunk's data is due
        self._line = bytearray()  # the body's incomplete last line
        self._error = bytearray()  # an error response's body, up to ERROR_BODY

    def feed(self, data: bytes) -> list[Any]:
        self._raw += data
        if not self.status and not self._read_head():
            return []
        return self._body(self._deframe(), ended=self.done)

    def eof(self) -> list[Any]:
        """The daemon closed the connection: the values of the last line, if it holds one."""
        if not self.status:
            raise ConnectionError(f"bad HTTP status line {bytes(self._raw[:80])!r}")
        self.done = True
        return self._body(self._deframe(), ended=True)

    def _read_head(self) -> bool:
        raw = self._raw
        end = raw.find(b"\r\n\r\n")
        if end < 0:
            if len(raw) > MAX_LINE:
                raise ConnectionError("HTTP response head too long")
            return False
        status_line, *headers = bytes(raw[:end]).split(b"\r\n")
        del raw[: end + 4]
        fields = status_line.split(None, 2)
        if len(fields) < 2 or not fields[1].isdigit() or not int(fields[1]):
            raise ConnectionError(f"bad HTTP status line {status_line[:80]!r}")
        for header in headers:
            name, _, value = header.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "transfer-encoding" and "chunked" in value.lower():
                self._length = None
            elif name == "content-length" and self._length == -1 and value.strip().isdigit():
                self._length = int(value.strip())
        self.status = int(fields[1])
        self.done = self._length == 0
        return True

    def _deframe(self) -> bytes:
        """The body's bytes received so far, without the chunked framing; sets ``done``."""
        raw = self._raw
        if self._length is not None:  # sized, or until EOF
            size = len(raw) if self._length < 0 else min(len(raw), self._length)
            data = bytes(raw[:size])
            del raw[:size]
            if self._length > 0:
                self._length -= size
                self.done = self._length == 0
            return data
        out = bytearray()
        while not self.done:
            if self._chunk:
                take = min(len(raw), self._chunk)
                out += raw[:take]
                del raw[:take]
                self._chunk -= take
                if self._chunk:
                    break
                self._crlf = True
            if self._crlf:
                if len(raw) < 2:
                    break
                del raw[:2]
                self._crlf = False
            end = raw.find(b"\n")
            if end < 0:
                if len(raw) > 1024:
                    raise ConnectionError("bad chunk size line")
                break
            size = int(bytes(raw[:end]).split(b";", 1)[0].strip() or b"0", 16)
            del raw[: end + 1]
            if size == 0:
                self.done = True
            self._chunk = size
        return bytes(out)

    def _body(self, data: bytes, *, ended: bool) -> list[Any]:
        if self.status != 200:
            self._error += data[: ERROR_BODY + 1 - len(self._error)]
            if ended or len(self._error) > ERROR_BODY:
                raise DockerHttpError(self.status, _error_message(bytes(self._error)))
            return []
        line = self._line
        line += data
        values: list[Any] = []
        if b"\n" in data:
            *complete, rest = bytes(line).split(b"\n")
            line[:] = rest
            values = [loads(text) for text in complete if text.strip()]
        if len(line) > MAX_LINE:
            raise ConnectionError("stats line too long")
        if ended and line.strip():
            values.append(loads(bytes(line)))
            line.clear()
        return values


def _error_message(body: bytes) -> str:
    try:
        return str(loads(body).get("message", body[:200]))
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace")


class PacedSelector(selectors.DefaultSelector):
    """A selector that, woken from a wait, pauses ``pause`` seconds, then takes all that is
    ready by then: with 200 streams sending a sample a second each, a wake-up per sample is
    most of the cost of reading them (issue 13). A poll that does not wait is not paused."""

    def __init__(self, pause: float) -> None:
        super().__init__()
        self._pause = pause

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        ready: list[tuple[Any, int]] = super().select(timeout)
        if ready and timeout != 0 and self._pause > 0:
            time.sleep(self._pause)  # the loop's own thread; the batch goes a little later
            ready = super().select(0)
        return ready


SampleCallback = Callable[[str, int, dict[str, Any]], None]  # (container_id, token, sample)
#: the newest sample of each stream since the last call, in the order the streams first sent
#: one: ((container_id, token, sample), ...)
SamplesCallback = Callable[[tuple[tuple[str, int, dict[str, Any]], ...]], None]
EndedCallback = Callable[[str, int, str, bool], None]  # (container_id, token, reason, gone)


class _Stream:
    """One container's stream: its socket, what of the request is unsent, its response."""

    __slots__ = ("connected", "container_id", "request", "response", "sock", "token")

    def __init__(self, container_id: str, token: int, sock: socket.socket, request: bytes) -> None:
        self.container_id = container_id
        self.token = token
        self.sock = sock
        self.request = request
        self.connected = False
        self.response = Response()


def connect_stream(docker_host: str, path: str) -> tuple[socket.socket, bytes]:
    """A stream's socket, still connecting, and the request it sends (a seam for fault
    tests: tests/test_faults.py gives one container a daemon that never answers)."""
    return dial(docker_host), request_bytes(path)


class StreamLoop:
    """One thread, one selector, one HTTP stats stream per opened container."""

    def __init__(
        self,
        docker_host: str,
        *,
        on_sample: SampleCallback,
        on_ended: EndedCallback,
        name: str = "StatsActor-streams",
        api_version: str | None = None,
        on_samples: SamplesCallback | None = None,
        batch_interval: float = 0.25,
        poll_pause: float = 0.0,
    ) -> None:
        self._docker_host = docker_host
        self._api_version = api_version
        self._on_sample = on_sample
        self._on_samples = on_samples
        self._on_ended = on_ended
        self._batch_interval = batch_interval
        # the newest sample of each stream, by container id, and when it goes: loop thread only
        self._batch: dict[str, tuple[str, int, dict[str, Any]]] = {}
        self._flush_at: float | None = None
        self._selector = PacedSelector(poll_pause)
        self._streams: dict[str, _Stream] = {}  # loop thread only
        # what the actor asks for, run by the loop thread: the wake socket interrupts its wait
        self._calls: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._wake_in, self._wake_out = socket.socketpair()
        for end in (self._wake_in, self._wake_out):
            end.setblocking(False)
        self._selector.register(self._wake_in, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stopped = False
        self._running = True  # loop thread only: False once asked to shut down

    # --- called from the actor thread -------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def open(self, container_id: str, token: int) -> None:
        self._call(self._open_stream, container_id, token)

    def close(self, container_id: str) -> None:
        self._call(self._close_stream, container_id)

    def stop(self, timeout: float = 2.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._thread.ident is None:  # never started: nothing runs the loop
            self._release()
            return
        self._calls.append((self._shutdown, ()))
        self._wake()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("%s did not stop within %.1fs", self._thread.name, timeout)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        if self._stopped:
            return
        self._calls.append((fn, args))
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
            self._wake_out.send(b"\0")

    # --- loop thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._running:
                now = time.monotonic()
                wait = None if self._flush_at is None else max(0.0, self._flush_at - now)
                for key, events in self._selector.select(wait):
                    if key.data is None:
                        with contextlib.suppress(OSError):
                            self._wake_in.recv(4096)
                    else:
                        self._ready(key.data, events)
                while self._calls:
                    fn, args = self._calls.popleft()
                    fn(*args)
                self._tick(time.monotonic())
        except Exception:  # a bug: logged, and the streams end with the thread
            log.exception("the stats streams' loop failed")
        finally:
            self._release()

    def _release(self) -> None:
        for stream in list(self._streams.values()):
            self._drop(stream)
        self._selector.close()
        self._wake_in.close()
        self._wake_out.close()

    def _tick(self, now: float) -> None:
        if self._flush_at is not None and now >= self._flush_at:
            self._flush()

    def _sampled(self, container_id: str, token: int, sample: dict[str, Any]) -> None:
        if self._on_samples is None:
            self._on_sample(container_id, token, sample)
            return
        self._batch[container_id] = (container_id, token, sample)  # replaces a staler one
        if self._flush_at is None:
            self._flush_at = time.monotonic() + self._batch_interval

    def _flush(self) -> None:
        self._flush_at = None
        batch, self._batch = self._batch, {}
        if batch and self._on_samples is not None:
            self._on_samples(tuple(batch.values()))

    def _shutdown(self) -> None:
        self._flush_at = None
        self._running = False

    def _open_stream(self, container_id: str, token: int) -> None:
        self._close_stream(container_id)
        path = api_path(f"/containers/{quote(container_id)}/stats?stream=1", self._api_version)
        try:
            sock, request = connect_stream(self._docker_host, path)
        except Exception as exc:
            self._ended(container_id, token, f"{type(exc).__name__}: {exc}", gone=False)
            return
        stream = _Stream(container_id, token, sock, request)
        self._streams[container_id] = stream
        self._selector.register(sock, selectors.EVENT_WRITE, stream)

    def _close_stream(self, container_id: str) -> None:
        """Closed by the actor: it already knows, so no ``on_ended``."""
        stream = self._streams.get(container_id)
        if stream is not None:
            self._drop(stream)

    def _drop(self, stream: _Stream) -> None:
        """Close a stream that is the container's current one (callers make sure)."""
        del self._streams[stream.container_id]
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(stream.sock)
        stream.sock.close()

    def _ready(self, stream: _Stream, events: int) -> None:
        try:
            if events & selectors.EVENT_WRITE:
                self._send(stream)
            elif events & selectors.EVENT_READ:
                self._receive(stream)
        except Exception as exc:
            gone = isinstance(exc, DockerHttpError) and exc.status == 404
            self._finish(stream, f"{type(exc).__name__}: {exc}", gone=gone)

    def _send(self, stream: _Stream) -> None:
        sock = stream.sock
        if not stream.connected:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error))
            stream.connected = True
        try:
            sent = sock.send(stream.request)
        except (BlockingIOError, InterruptedError):
            return
        stream.request = stream.request[sent:]
        if not stream.request:
            self._selector.modify(sock, selectors.EVENT_READ, stream)

    def _receive(self, stream: _Stream) -> None:
        try:
            data = stream.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        response = stream.response
        values = response.feed(data) if data else response.eof()
        for sample in values:
            if isinstance(sample, dict):
                self._sampled(stream.container_id, stream.token, sample)
        if response.done:
            self._finish(stream, "stream ended")

    def _finish(self, stream: _Stream, reason: str, *, gone: bool = False) -> None:
        if self._streams.get(stream.container_id) is not stream:
            return  # closed or replaced meanwhile
        self._drop(stream)
        self._ended(stream.container_id, stream.token, reason, gone=gone)

    def _ended(self, container_id: str, token: int, reason: str, *, gone: bool) -> None:
        self._flush()  # its samples before its end
        self._on_ended(container_id, token, reason, gone)
