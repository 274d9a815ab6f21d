"""Docker stats streams for many containers, and the listing of the running ones, for the
StatsActor.

The streams run on one selector in one thread (:mod:`actors.telemetry.stream_loop`), started
with the first stream and stopped with the last (``park``): an agent whose host runs no
container never loads the loop's code, and no loop thread idles. The listing of the running
containers is one GET on a worker thread through the lean read path
(:class:`~actors.runtime.docker_http.LeanDocker`), which needs no loop. Every answer goes to a
callback (``on_listed``, and the loop's ``on_sample`` / ``on_samples`` / ``on_ended``), which
``tell``\\ s the actor; nothing here touches actor state.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from actors.runtime.docker_http import LeanDocker, lean_address
from actors.runtime.pool import WorkerPool

if TYPE_CHECKING:
    from actors.telemetry.stream_loop import (
        EndedCallback,
        SampleCallback,
        SamplesCallback,
        StreamLoop,
    )

#: (request, ((container_id, name), ...) or None on failure, the failure)
ListedCallback = Callable[[int, tuple[tuple[str, str], ...] | None, str], None]
#: how long one listing may take before it counts as failed
LISTING_TIMEOUT_S = 30.0
_RUNNING = "filters=" + quote(json.dumps({"status": ["running"]}))


class StatsStreams:
    """The stats streams of the opened containers, and listings of the running ones."""

    def __init__(
        self,
        docker_host: str,
        *,
        on_sample: SampleCallback,
        on_ended: EndedCallback,
        on_listed: ListedCallback,
        name: str = "StatsActor-streams",
        api_version: str | None = None,
        on_samples: SamplesCallback | None = None,
        batch_interval: float = 0.25,
        poll_pause: float = 0.0,
    ) -> None:
        self._docker_host = docker_host
        self._api_version = api_version
        self._on_listed = on_listed
        self._loop_args: dict[str, Any] = {
            "on_sample": on_sample,
            "on_ended": on_ended,
            "name": name,
            "api_version": api_version,
            "on_samples": on_samples,
            "batch_interval": batch_interval,
            "poll_pause": poll_pause,
        }
        self._loop: StreamLoop | None = None  # with the first stream
        # the listing's thread exits a second after its last listing (leaves no idle thread)
        self._listing = WorkerPool(1, f"{name}-listing", keep=0, idle_s=1.0)
        self._lock = threading.Lock()
        self._stopped = False  # under the lock
        self._in_flight: LeanDocker | None = None  # the listing's connection, under the lock

    # --- called from the actor thread -------------------------------------------------------

    def open(self, container_id: str, token: int) -> None:
        if self.stopped:
            return
        if self._loop is None:
            from actors.telemetry.stream_loop import StreamLoop  # only once needed

            self._loop = StreamLoop(self._docker_host, **self._loop_args)
            self._loop.start()
        self._loop.open(container_id, token)

    def close(self, container_id: str) -> None:
        if self._loop is not None:
            self._loop.close(container_id)

    def park(self, timeout: float = 2.0) -> None:
        """No stream is open any more: stop the loop and its thread, so none idles; the next
        ``open`` starts them again."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.stop(timeout)

    def list_running(self, request: int) -> None:
        """List the running containers on the worker thread; ``on_listed`` gets the answer."""
        self._listing.submit(lambda: self._list(request))

    @property
    def stopped(self) -> bool:
        with self._lock:
            return self._stopped

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the streams and the listing; a listing in flight is aborted (its thread ends,
        even while Docker does not answer)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            in_flight = self._in_flight
        self._listing.close()
        if in_flight is not None:
            in_flight.abort()
        if self._loop is not None:
            self._loop.stop(timeout)

    # --- the listing's worker thread ----------------------------------------------------------

    def _list(self, request: int) -> None:
        try:
            address = lean_address(self._docker_host)
            if address is None:
                scheme = self._docker_host.partition("://")[0]
                raise ValueError(f"unsupported DOCKER_HOST scheme for stats: {scheme}")
            docker = LeanDocker(address, timeout=LISTING_TIMEOUT_S, api_version=self._api_version)
            with self._lock:
                if self._stopped:
                    return
                self._in_flight = docker
            try:
                body = docker.get("/containers/json", _RUNNING)
            finally:
                with self._lock:
                    self._in_flight = None
                docker.close()
            listed = tuple(
                (str(c["Id"]), str((c.get("Names") or [""])[0]).lstrip("/"))
                for c in json.loads(body)
            )
        except Exception as exc:
            self._on_listed(request, None, f"{type(exc).__name__}: {exc}")
            return
        self._on_listed(request, listed, "")
