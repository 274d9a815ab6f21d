"""Helper threads (STYLE §1.4), written once: the resource they block on, the thread, the hand-off.

An actor's blocking reads and writes (a WebSocket, a Docker event stream, an exec socket) run
in helper threads it owns. Every such owner needs the same few pieces, and the hard one is the
*close race*: the owner closes while its thread is still obtaining the resource (dialing,
``events()``, ``exec_start``), so the thread gets a resource nobody will ever close.

* :class:`Guarded` holds that resource under a lock with a closed flag. The thread
  :meth:`~Guarded.adopt`\\ s what it obtained; after the owner's :meth:`~Guarded.close` the
  resource is disposed of at once, by the thread, and never read. ``close`` wakes a thread
  blocked on the resource (a socket ``shutdown``, a stream ``close``); :meth:`~Guarded.dispose`
  releases it for good once the threads that read it have stopped.
* :class:`HelperThread` is a named daemon thread started once and joined with a timeout (a
  thread that does not stop in time is logged, never waited on for ever).
* :class:`Handoff` is a writer's FIFO with a stop mark: the owner only enqueues, so a peer that
  stops reading cannot stall it.
* :func:`tell_or_close`: a thread tells its owner each item as a typed message; once the owner
  is dead the resource is closed and the thread exits.

Messages from a thread carry the generation of the resource it serves; the owner drops those
of older generations (a fresh :class:`Guarded` per generation makes an old thread's late
resource its own generation's, closed already).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import pykka

log = logging.getLogger(__name__)

R = TypeVar("R")
T = TypeVar("T")


def _quietly(action: Callable[[R], object], resource: R, what: str) -> None:
    try:
        action(resource)
    except Exception as exc:  # closing must never raise into the owner or the thread
        log.debug("%s failed: %s: %s", what, type(exc).__name__, exc)


class Guarded(Generic[R]):
    """The resource one helper thread obtains and its owner closes, under one lock.

    ``dispose`` releases a resource for good; ``wake`` (optional) makes a thread blocked on it
    return without releasing it, so the descriptor is never closed under a running read. Without
    ``wake``, :meth:`close` disposes at once (a docker-py stream's ``close`` is how one stops it).
    Both are called outside the lock and their exceptions are swallowed (logged at debug).

    Every resource passed to :meth:`adopt` is disposed exactly once: refused at once, or later
    by :meth:`dispose`, :meth:`drop` or a ``wake``-less :meth:`close`.
    """

    def __init__(
        self, *, dispose: Callable[[R], object], wake: Callable[[R], object] | None = None
    ) -> None:
        self._dispose = dispose
        self._wake = wake
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._resource: R | None = None

    # --- the helper thread ------------------------------------------------------------------------

    def adopt(self, resource: R) -> bool:
        """The thread obtained ``resource``: True if it may use it.

        False once the owner has closed: ``resource`` has then been disposed of here and must
        never be read (the close race).
        """
        with self._lock:
            refused = self._closed.is_set()
            if not refused:
                self._resource = resource
        if refused:
            _quietly(self._dispose, resource, "disposing of a resource obtained after close")
        return not refused

    def drop(self, resource: R) -> None:
        """The thread is done with ``resource``: dispose of it, unless that happened already.

        The guard stays open, for a thread that obtains a new resource per attempt.
        """
        with self._lock:
            mine = self._resource is resource
            if mine:
                self._resource = None
        if mine:
            _quietly(self._dispose, resource, "disposing of a resource")

    # --- the owner (any thread) -----------------------------------------------------------------

    def close(self) -> bool:
        """Mark closed and wake the thread; True for the call that closed it. Never raises."""
        with self._lock:
            if self._closed.is_set():
                return False
            self._closed.set()
            resource = self._resource
            if self._wake is None:
                self._resource = None
        if resource is not None:
            if self._wake is not None:
                _quietly(self._wake, resource, "waking a helper thread")
            else:
                _quietly(self._dispose, resource, "disposing of a resource")
        return True

    def dispose(self) -> None:
        """Close, then release the resource for good (once no thread reads it). Idempotent."""
        self.close()
        with self._lock:
            resource, self._resource = self._resource, None
        if resource is not None:
            _quietly(self._dispose, resource, "disposing of a resource")

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def wait_closed(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds, or until closed; True if closed (a thread's backoff)."""
        return self._closed.wait(timeout)

    @property
    def resource(self) -> R | None:
        """What the thread adopted and nobody released yet."""
        with self._lock:
            return self._resource


class HelperThread:
    """A named daemon thread: a stuck call in it can never hold up process exit."""

    def __init__(self, name: str, target: Callable[[], object]) -> None:
        self.name = name
        self._thread = threading.Thread(target=target, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float, *, warn: bool = True) -> bool:
        """Wait up to ``timeout`` seconds; True once the thread has ended (or never started).

        A thread never joins itself (a helper may end its own owner's resources).
        """
        if not self.started:
            return True
        if self._thread is threading.current_thread():
            return False
        self._thread.join(max(0.0, timeout))
        if self._thread.is_alive():
            if warn:
                log.warning("%s did not stop within %.1fs", self.name, timeout)
            return False
        return True


class Handoff(Generic[T]):
    """A writer thread's FIFO: the owner puts items, the writer gets them until the stop mark."""

    _STOP: Any = object()

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def put(self, item: T) -> None:
        self._queue.put(item)

    def stop(self) -> None:
        """The writer's :meth:`get` says None after the items put before this."""
        self._queue.put(self._STOP)

    def get(self) -> T | None:
        """The next item (blocking), or None at the stop mark."""
        item = self._queue.get()
        return None if item is self._STOP else item

    def qsize(self) -> int:
        return self._queue.qsize()

    def empty(self) -> bool:
        return self._queue.empty()


def tell_or_close(ref: pykka.ActorRef[Any], message: Any, guarded: Guarded[Any]) -> bool:
    """Tell ``message`` to the owner; if it is dead, close ``guarded`` and say False (exit)."""
    try:
        ref.tell(message)
        return True
    except pykka.ActorDeadError:
        guarded.close()
        return False


def tell_quietly(ref: pykka.ActorRef[Any], message: Any) -> bool:
    """Tell ``message`` (a thread's last word, ``…Stopped``); False if the owner is gone."""
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)
        return True
    return False
