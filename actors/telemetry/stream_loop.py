"""The stats streams' loop: one thread, one asyncio loop, one HTTP stats stream per container.

Each running container gets its own ``GET /containers/{id}/stats?stream=1`` HTTP connection, as
in the Go agent, but all connections are multiplexed by one asyncio event loop in one thread
(``StatsActor-streams``) instead of one blocked thread per container. bench/stats_design.py
measured the alternatives (thread per stream, one-shot polling) on dockerd 20.10.
:class:`~actors.telemetry.streams.StatsStreams` starts it with the first stream, so an agent
with no running container never loads asyncio.

The tiny HTTP/1.1 client below speaks just enough for Docker's API over ``unix://`` or plain
``tcp://`` (GET, chunked or sized bodies). The loop thread never touches actor state: it calls
the ``on_sample`` / ``on_ended`` callbacks, which ``tell`` the actor. With ``on_samples``, the
newest sample of every stream is collected and handed over together every ``batch_interval``
seconds instead: one wake-up of the actor per interval, not one per sample (issue 13; Docker
sends one sample a second per stream, so a fraction of that delays nothing). A stream that
delivers several samples within one interval hands over its newest only: that is a backlog (the
agent was stopped or starved while Docker kept sending), its older samples are stale, and
holding them all (200 streams' worth of 20 seconds) left a fragmented heap behind. With
``poll_pause``, the loop's selector waits that long after each wake-up before it gathers what is
ready, so one wake-up serves the samples of many streams instead of one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import selectors
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from actors.runtime.docker_client import api_path, open_connection
from messages.common import loads

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20  # one stats sample is a few KiB; refuse absurd lines


class DockerHttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


async def _request(
    docker_host: str, path: str
) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter, int | None]:
    """Send a GET; return (status, reader, writer, length) with the headers consumed.

    ``length`` is the body's Content-Length, or None for a chunked body (-1: until EOF).
    """
    reader, writer = await open_connection(docker_host, limit=MAX_LINE)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: docker\r\nUser-Agent: dockmon-agent\r\n"
            "Accept: application/json\r\nConnection: close\r\n\r\n".encode("ascii")
        )
        await writer.drain()
        status_line = await reader.readline()
        fields = status_line.split(None, 2)
        if len(fields) < 2 or not fields[1].isdigit():
            raise ConnectionError(f"bad HTTP status line {status_line[:80]!r}")
        status = int(fields[1])
        length: int | None = -1
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "transfer-encoding" and "chunked" in value.lower():
                length = None
            elif name == "content-length" and length == -1 and value.strip().isdigit():
                length = int(value.strip())
        return status, reader, writer, length
    except BaseException:
        writer.close()
        raise


async def _body_chunks(reader: asyncio.StreamReader, length: int | None) -> Any:
    """Yield the body's bytes as they arrive (de-chunked)."""
    if length is not None:
        left = length
        while left != 0:
            data = await reader.read(65536 if left < 0 else min(left, 65536))
            if not data:
                return
            left = left - len(data) if left > 0 else left
            yield data
        return
    while True:
        size_line = await reader.readline()
        if not size_line:
            return
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            return
        data = await reader.readexactly(size)
        await reader.readexactly(2)  # CRLF after each chunk
        yield data


async def _json_lines(reader: asyncio.StreamReader, length: int | None) -> Any:
    """Yield each newline-delimited JSON value of the body."""
    buffer = b""
    async for data in _body_chunks(reader, length):
        buffer += data
        if len(buffer) > MAX_LINE:
            raise ConnectionError("stats line too long")
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield loads(line)
    if buffer.strip():
        yield loads(buffer)


async def _read_error(reader: asyncio.StreamReader, length: int | None) -> str:
    body = b""
    with contextlib.suppress(Exception):
        async for data in _body_chunks(reader, length):
            body += data
            if len(body) > 4096:
                break
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
        if ready and timeout != 0:
            time.sleep(self._pause)  # the loop's own thread; timers only run a little later
            ready = super().select(0)
        return ready


SampleCallback = Callable[[str, int, dict[str, Any]], None]  # (container_id, token, sample)
#: the newest sample of each stream since the last call, in the order the streams first sent
#: one: ((container_id, token, sample), ...)
SamplesCallback = Callable[[tuple[tuple[str, int, dict[str, Any]], ...]], None]
EndedCallback = Callable[[str, int, str, bool], None]  # (container_id, token, reason, gone)


class StreamLoop:
    """One thread, one asyncio loop, one HTTP stats stream per opened container."""

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
        self._batch_interval = batch_interval
        # the newest sample of each stream, by container id: loop thread only
        self._batch: dict[str, tuple[str, int, dict[str, Any]]] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        self._on_ended = on_ended
        self._loop = (
            asyncio.SelectorEventLoop(PacedSelector(poll_pause))
            if poll_pause > 0
            else asyncio.new_event_loop()
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}  # loop thread only
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stopped = False

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
        with contextlib.suppress(RuntimeError):  # loop already closed
            self._loop.call_soon_threadsafe(self._shutdown)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("%s did not stop within %.1fs", self._thread.name, timeout)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        if self._stopped:
            return
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, *args)

    # --- loop thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def _sampled(self, container_id: str, token: int, sample: dict[str, Any]) -> None:
        if self._on_samples is None:
            self._on_sample(container_id, token, sample)
            return
        self._batch[container_id] = (container_id, token, sample)  # replaces a staler one
        if self._flush_timer is None:
            self._flush_timer = self._loop.call_later(self._batch_interval, self._flush)

    def _flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        batch, self._batch = self._batch, {}
        if batch and self._on_samples is not None:
            self._on_samples(tuple(batch.values()))

    def _shutdown(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()

        async def finish() -> None:
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        self._loop.create_task(finish())

    def _open_stream(self, container_id: str, token: int) -> None:
        old = self._tasks.pop(container_id, None)
        if old is not None:
            old.cancel()
        self._tasks[container_id] = self._loop.create_task(self._stream(container_id, token))

    def _close_stream(self, container_id: str) -> None:
        task = self._tasks.pop(container_id, None)
        if task is not None:
            task.cancel()

    async def _stream(self, container_id: str, token: int) -> None:
        reason, gone = "stream ended", False
        writer: asyncio.StreamWriter | None = None
        try:
            path = api_path(f"/containers/{quote(container_id)}/stats?stream=1", self._api_version)
            status, reader, writer, length = await _request(self._docker_host, path)
            if status != 200:
                gone = status == 404
                raise DockerHttpError(status, await _read_error(reader, length))
            async for sample in _json_lines(reader, length):
                if isinstance(sample, dict):
                    self._sampled(container_id, token, sample)
        except asyncio.CancelledError:
            return  # closed by the actor: it already knows
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            if writer is not None:
                writer.close()
            if self._tasks.get(container_id) is asyncio.current_task():
                del self._tasks[container_id]
        self._flush()  # its samples before its end
        self._on_ended(container_id, token, reason, gone)
