"""The worker pool, written once: the DockerGateway's commands and the HealthChecks' requests.

:class:`WorkerPool` runs jobs on daemon threads fed from one FIFO queue (daemon threads, so a
call that never returns can never hold up process exit):

* it grows on demand, a new thread whenever every thread has a job, up to ``size``, so a job
  never waits behind a hung one while the pool is below its size;
* a thread idle for ``idle_s`` seconds exits, down to ``keep`` (``idle_s=None``: never, for an
  owner that gives each thread a resource of its own, like the gateway's docker-py clients);
* ``submit(job, key=...)``: jobs under one key run one at a time, in the order submitted; jobs
  under other keys, or none, run beside them. The gateway keys container commands by container,
  so a 10 s ``stop`` delays only later commands for that container.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)

Job = Callable[[], object]
_Item = tuple[Job, Hashable | None]


class WorkerPool:
    def __init__(self, size: int, name: str, *, keep: int = 1, idle_s: float | None = 30.0) -> None:
        if size < 1:
            raise ValueError("a worker pool needs at least one thread")
        self._size = size
        self._name = name
        self._keep = keep
        self._idle_s = idle_s
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._busy = 0  # jobs queued or running (not those waiting behind their key)
        self._keys: dict[Hashable, deque[Job]] = {}  # key with a job queued or running -> next
        self._closed = False
        self._serial = itertools.count()

    def submit(self, job: Job, *, key: Hashable | None = None) -> bool:
        """Queue ``job``; False (not run) once the pool is closed. Never blocks."""
        with self._lock:
            if self._closed:
                return False
            if key is not None:
                waiting = self._keys.get(key)
                if waiting is not None:  # one of its key is queued or running: after it
                    waiting.append(job)
                    return True
                self._keys[key] = deque()
            self._enqueue(job, key)
        return True

    def close(self) -> None:
        """Take no more jobs; the threads exit after those already queued (waiting ones are
        dropped). Does not wait for them."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            count = len(self._threads)
        for _ in range(count):
            self._queue.put(None)

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    @property
    def threads(self) -> int:
        with self._lock:
            return sum(t.is_alive() for t in self._threads)

    @property
    def busy(self) -> int:
        """Jobs queued or running."""
        with self._lock:
            return self._busy

    # --- under the lock ---------------------------------------------------------------------

    def _enqueue(self, job: Job, key: Hashable | None) -> None:
        self._busy += 1  # a new thread when every thread has a job
        if self._busy > len(self._threads) and len(self._threads) < self._size:
            thread = threading.Thread(
                target=self._run, name=f"{self._name}-{next(self._serial)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        self._queue.put((job, key))

    def _finished(self, key: Hashable | None) -> None:
        self._busy -= 1
        if key is None:
            return
        waiting = self._keys[key]
        if waiting and not self._closed:
            self._enqueue(waiting.popleft(), key)
        else:
            del self._keys[key]

    # --- worker threads ---------------------------------------------------------------------

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            try:
                item = self._queue.get(timeout=self._idle_s)
            except queue.Empty:
                with self._lock:  # under the lock: a job submitted now still finds a thread
                    if self._busy < len(self._threads) and len(self._threads) > self._keep:
                        self._threads.remove(me)
                        return
                continue
            if item is None:
                return
            job, key = item
            try:
                job()
            except Exception:
                log.exception("%s: a job failed unexpectedly", self._name)
            finally:
                with self._lock:
                    self._finished(key)
