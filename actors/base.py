"""What every actor shares: peer handles, injected time, timers, and supervision hooks."""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import pykka

from actors.errors import FatalError, TransientError
from actors.runtime.backoff import Backoff
from messages.common import Ping, Pong
from messages.records import record
from messages.roles import Role
from messages.supervision import ChildFailed

log = logging.getLogger(__name__)


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time_ns(self) -> int: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time_ns(self) -> int:
        return time.time_ns()


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    def tell_later(self, delay: float, ref: pykka.ActorRef[Any], message: Any) -> TimerHandle:
        """Tell ``message`` to ``ref`` after ``delay`` seconds; dead refs are ignored."""
        ...


def _tell_quietly(ref: pykka.ActorRef[Any], message: Any) -> None:
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        log.debug("timer fired for a stopped actor: %s", type(message).__name__)


@dataclass(eq=False)
class _Timer:
    due: float
    ref: pykka.ActorRef[Any]
    message: Any
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class ThreadScheduler:
    """One daemon thread serving every timer of the process from a heap."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._heap: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="Scheduler", daemon=True)
        self._thread.start()

    def tell_later(self, delay: float, ref: pykka.ActorRef[Any], message: Any) -> TimerHandle:
        timer = _Timer(self._clock.monotonic() + max(0.0, delay), ref, message)
        with self._cond:
            heapq.heappush(self._heap, (timer.due, next(self._seq), timer))
            self._cond.notify()
        return timer

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if self._heap:
                        wait = self._heap[0][0] - self._clock.monotonic()
                        if wait <= 0:
                            break
                        self._cond.wait(wait)
                    else:
                        self._cond.wait()
                if self._stopped:
                    return
                _, _, timer = heapq.heappop(self._heap)
            if not timer.cancelled:
                _tell_quietly(timer.ref, timer.message)


class Peers:
    """Role -> current actor ref. Owned by the supervisor, which swaps refs on restart.

    A message to a dead or missing peer is a logged dead letter, never an exception, so one
    crashed actor cannot cascade into its neighbours.

    While a role is *starting* (``reserve`` until ``set``) messages for it are held and
    delivered, in order, when its ref is published: a peer may answer something the new actor
    sent from ``on_start`` before its factory has even returned the ref to the supervisor.
    """

    #: messages held per starting role; beyond this a tell is a dead letter
    HOLD_LIMIT = 1000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: dict[Role, pykka.ActorRef[Any]] = {}
        self._held: dict[Role, list[Any]] = {}

    def reserve(self, role: Role) -> None:
        """``role`` is about to start: hold its messages until ``set`` (or drop at ``remove``)."""
        with self._lock:
            self._refs.pop(role, None)
            self._held.setdefault(role, [])

    def set(self, role: Role, ref: pykka.ActorRef[Any]) -> None:
        with self._lock:
            self._refs[role] = ref
            held = self._held.pop(role, [])
            for message in held:  # under the lock: nothing told after set() can overtake them
                try:
                    ref.tell(message)
                except pykka.ActorDeadError:
                    kind = type(message).__name__
                    log.warning("dead letter: %s for %s (not running)", kind, role)

    def remove(self, role: Role, ref: pykka.ActorRef[Any] | None = None) -> None:
        with self._lock:
            if ref is None or self._refs.get(role) is ref:
                self._refs.pop(role, None)
            dropped = self._held.pop(role, []) if ref is None else []
        for message in dropped:
            log.warning("dead letter: %s for %s (it failed to start)", type(message).__name__, role)

    def get(self, role: Role) -> pykka.ActorRef[Any] | None:
        with self._lock:
            return self._refs.get(role)

    def tell(self, role: Role, message: Any, *, optional: bool = False) -> bool:
        """Tell ``message`` to ``role``; False (and a dead-letter log line) if nobody got it.

        ``optional``: the role may legitimately not run (a feature that is off); no log line.
        """
        with self._lock:
            ref = self._refs.get(role)
            held = self._held.get(role) if ref is None else None
            if held is not None and len(held) < self.HOLD_LIMIT:
                held.append(message)
                return True
        if ref is not None:
            try:
                ref.tell(message)
                return True
            except pykka.ActorDeadError:
                pass
        if not optional:
            log.warning("dead letter: %s for %s (not running)", type(message).__name__, role)
        return False

    def ask(self, role: Role, message: Any, *, timeout: float) -> Any:
        """``ask`` down the dependency graph; a missing or dead peer is a TransientError."""
        ref = self.get(role)
        if ref is None:
            raise TransientError(f"{role} is not running")
        try:
            return ref.ask(message, timeout=timeout)
        except pykka.ActorDeadError as exc:
            raise TransientError(f"{role} stopped: {exc}") from exc
        except pykka.Timeout as exc:
            raise TransientError(f"{role} did not answer within {timeout:g}s") from exc


@record
class ActorContext:
    """Everything the supervisor injects into a child."""

    child_id: str  # the role it was started as (a Role), or a test's own name
    generation: int
    peers: Peers
    scheduler: Scheduler
    clock: Clock
    supervisor: pykka.ActorRef[Any] | None = None


class SupervisedActor(pykka.ThreadingActor):
    """Base of every agent actor.

    ``handle`` is the actor's ``on_receive``; ``Ping`` is answered here so the supervisor can
    confirm a start. Resources are released in ``_release`` from both ``on_stop`` and
    ``on_failure`` (pykka calls only one of them), and a crash is reported as ``ChildFailed``.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap each subclass's ``on_start`` so a failure in it releases what it had started.

        pykka runs neither ``on_stop`` nor ``on_failure`` when ``on_start`` raises, so without
        this a reader thread, a pool or a timer started before the failure would leak.
        """
        super().__init_subclass__(**kwargs)
        start = cls.__dict__.get("on_start")
        if start is None or getattr(start, "_releases_on_failure", False):
            return

        @functools.wraps(start)
        def on_start(self: SupervisedActor) -> None:
            try:
                start(self)
            except BaseException:
                self._release_after_failed_start()
                raise

        on_start._releases_on_failure = True  # type: ignore[attr-defined]
        setattr(cls, "on_start", on_start)  # noqa: B010 (a method, set on the class)

    def __init__(self, ctx: ActorContext) -> None:
        super().__init__()
        self.ctx = ctx

    @staticmethod
    def _create_actor_inbox() -> queue.SimpleQueue[Any]:
        """The inbox: a ``queue.SimpleQueue`` (C) instead of pykka's ``queue.Queue``, whose
        ``put``/``get`` run a Python-level lock and condition each time. An event takes 4-5
        tells (the hand-off to the Connection, the bookkeeping, the pong), so this is about a
        quarter of the agent's CPU per event as profiled (issue 13). pykka only puts, gets and
        asks ``empty()``, all of which it has."""
        return queue.SimpleQueue()

    def _release_after_failed_start(self) -> None:
        try:
            self._release()
        except Exception:
            log.exception("%s: releasing after a failed start failed", self.ctx.child_id)

    def on_receive(self, message: object) -> Any:
        if isinstance(message, Ping):
            return Pong(actor=self.ctx.child_id, generation=self.ctx.generation)
        return self.handle(message)

    def handle(self, message: object) -> Any:
        """Dispatch one message: narrow it to the actor's ``Inbox`` (else log it as ignored),
        then ``match`` over the Inbox ending in ``case _: assert_never(message)``, so that the
        type checker flags a message the actor accepts but does not handle."""
        raise NotImplementedError

    def _release(self) -> None:
        """Close what the actor owns. Must be idempotent and never raise."""

    def on_stop(self) -> None:
        self._release()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self._release()
        finally:
            if self.ctx.supervisor is not None:
                _tell_quietly(
                    self.ctx.supervisor,
                    ChildFailed(
                        child_id=self.ctx.child_id,
                        generation=self.ctx.generation,
                        error=f"{type(exception_value).__name__}: {exception_value}",
                        fatal=isinstance(exception_value, FatalError),
                    ),
                )

    def tell_self_later(self, delay: float, message: Any) -> TimerHandle:
        return self.ctx.scheduler.tell_later(delay, self.actor_ref, message)


class RepeatLimiter:
    """Log a problem once, then again only at growing intervals while the same one persists.

    ``check(key, now)`` says whether to log now: at once the first time ``key`` is seen (or
    after a different key, or ``clear()``), then after ``first`` seconds, doubling up to
    ``maximum``. It returns None to stay quiet, else how many repeats were skipped since the
    last line (so the line can say so).
    """

    def __init__(self, first: float = 60.0, maximum: float = 3600.0) -> None:
        self._quiet = Backoff(first, maximum, jitter=False)  # the interval before the next line
        self._key: str | None = None
        self._next = 0.0
        self._skipped = 0

    def check(self, key: str, now: float) -> int | None:
        if key != self._key:
            self._key, self._skipped = key, 0
            self._quiet.reset()
            self._next = now + self._quiet.next_delay()
            return 0
        if now < self._next:
            self._skipped += 1
            return None
        skipped, self._skipped = self._skipped, 0
        self._next = now + self._quiet.next_delay()
        return skipped

    def clear(self) -> None:
        self._key = None
        self._skipped = 0
