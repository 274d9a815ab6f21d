"""OTP-style supervisor for the agent's actors.

Children are described by :class:`ChildSpec` and started in order, each start confirmed by an
``ask(Ping)`` with a timeout. A crashed child (its ``on_failure`` tells ``ChildFailed``) is
replaced by a fresh instance from its factory after a short backoff, according to the strategy.
More than ``max_restarts`` restarts within ``period_s`` — or a ``FatalError`` — stops every child
in reverse order and ends the process with a non-zero exit code, so the container's restart
policy takes over. :class:`Supervisor` runs this in the main thread and maps SIGTERM/SIGINT to an
orderly shutdown.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

import pykka
import pykka.debug

from actors.base import ActorContext, Clock, Peers, Scheduler, SystemClock, ThreadScheduler
from actors.runtime.backoff import exponential
from messages.common import Ping
from messages.records import record
from messages.roles import Role
from messages.status import ActorRestarted, AgentStopping
from messages.supervision import ChildFailed, RestartChildren, Shutdown

log = logging.getLogger(__name__)


class Restart(enum.Enum):
    PERMANENT = "permanent"  # always restarted
    TRANSIENT = "transient"  # restarted after a crash (every reported failure is abnormal)
    TEMPORARY = "temporary"  # never restarted


class Strategy(enum.Enum):
    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


ActorFactory = Callable[[ActorContext], pykka.ActorRef[Any]]


@record
class ChildSpec:
    child_id: Role
    factory: ActorFactory
    restart: Restart = Restart.PERMANENT
    shutdown_timeout: float = 3.0
    start_timeout: float = 10.0


@dataclass
class _Child:
    spec: ChildSpec
    generation: int = 0
    ref: pykka.ActorRef[Any] | None = None


class SupervisorActor(pykka.ThreadingActor):
    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        peers: Peers,
        scheduler: Scheduler,
        clock: Clock,
        on_exit: Callable[[int, str], None],
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        max_restarts: int = 5,
        period_s: float = 30.0,
        restart_delay: tuple[float, float] = (0.1, 2.0),
    ) -> None:
        super().__init__()
        ids = [s.child_id for s in specs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate child ids: {ids}")
        self._children = [_Child(s) for s in specs]
        self._peers = peers
        self._scheduler = scheduler
        self._clock = clock
        self._on_exit = on_exit
        self._strategy = strategy
        self._max_restarts = max_restarts
        self._period = period_s
        self._delay_min, self._delay_max = restart_delay
        self._restarts: deque[float] = deque()
        self._restart_total = 0
        self._stopping = False

    # --- lifecycle -----------------------------------------------------------------------------

    def on_start(self) -> None:
        for child in self._children:
            error = self._start_child(child)
            if error is not None:
                self._shutdown(f"{child.spec.child_id} failed to start: {error}", 1)
                return
        log.info("all actors started: %s", ", ".join(c.spec.child_id for c in self._children))

    def on_receive(self, message: Any) -> Any:
        match message:
            case ChildFailed():
                self._child_failed(message)
            case RestartChildren(child_ids=ids):
                self._restart(ids)
            case Shutdown(reason=reason, exit_code=code):
                self._shutdown(reason, code)
            case Ping():
                return {c.spec.child_id: c.generation for c in self._children if c.ref}
            case _:
                log.warning("supervisor ignored %r", message)
        return None

    # --- children ------------------------------------------------------------------------------

    def _child(self, child_id: str) -> _Child | None:
        return next((c for c in self._children if c.spec.child_id == child_id), None)

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """The supervisor itself crashed: stop every child and exit rather than hang."""
        self._stopping = True
        for child in reversed(self._children):
            self._stop_child(child)
        self._on_exit(1, f"supervisor crashed: {exception_value!r}")

    def _start_child(self, child: _Child) -> str | None:
        child.generation += 1
        ctx = ActorContext(
            child_id=child.spec.child_id,
            generation=child.generation,
            peers=self._peers,
            scheduler=self._scheduler,
            clock=self._clock,
            supervisor=self.actor_ref,
        )
        # Reserved before the factory runs: the child's on_start runs in its own thread while
        # the factory is still returning, and a peer may answer what it sends from there (the
        # gateway answering the Connection's DescribeHost) before we have the ref. Peers holds
        # such messages and delivers them when the ref is published below.
        self._peers.reserve(child.spec.child_id)
        try:
            ref = child.spec.factory(ctx)
        except Exception as exc:
            self._peers.remove(child.spec.child_id)
            log.error("cannot create %s: %s", child.spec.child_id, exc, exc_info=True)
            return f"{type(exc).__name__}: {exc}"
        self._peers.set(child.spec.child_id, ref)
        try:
            ref.ask(Ping(), timeout=child.spec.start_timeout)
        except pykka.Timeout:
            self._peers.remove(child.spec.child_id, ref)
            ref.stop(block=False)
            return f"no answer within {child.spec.start_timeout:g}s"
        except pykka.ActorDeadError:
            self._peers.remove(child.spec.child_id, ref)
            return "it stopped during on_start (see the error logged above)"
        child.ref = ref
        log.debug("started %s (generation %d)", child.spec.child_id, child.generation)
        return None

    def _stop_child(self, child: _Child) -> None:
        ref, child.ref = child.ref, None
        if ref is None:
            return
        self._peers.remove(child.spec.child_id, ref)
        try:
            ref.stop(block=True, timeout=child.spec.shutdown_timeout)
        except pykka.Timeout:
            log.error(
                "%s did not stop within %.1fs", child.spec.child_id, child.spec.shutdown_timeout
            )

    def _child_failed(self, msg: ChildFailed) -> None:
        if self._stopping:
            return
        child = self._child(msg.child_id)
        if child is None or msg.generation != child.generation or child.ref is None:
            return  # a stale report about an instance already replaced
        child.ref = None
        self._peers.remove(child.spec.child_id)
        log.error("actor %s crashed: %s", msg.child_id, msg.error)
        if msg.fatal:
            self._shutdown(f"{msg.child_id}: {msg.error}", 1)
            return
        if child.spec.restart is Restart.TEMPORARY:
            log.warning("%s is temporary and will not be restarted", msg.child_id)
            return
        self._schedule_restart(child)

    def _schedule_restart(self, child: _Child) -> None:
        now = self._clock.monotonic()
        self._restarts.append(now)
        while self._restarts and now - self._restarts[0] > self._period:
            self._restarts.popleft()
        if len(self._restarts) > self._max_restarts:
            self._shutdown(
                f"restart intensity exceeded: more than {self._max_restarts} restarts within "
                f"{self._period:g}s (last: {child.spec.child_id}); exiting so the container "
                "restart policy can take over",
                1,
            )
            return
        index = self._children.index(child)
        match self._strategy:
            case Strategy.ONE_FOR_ONE:
                affected = [child]
            case Strategy.ONE_FOR_ALL:
                affected = list(self._children)
            case Strategy.REST_FOR_ONE:
                affected = self._children[index:]
        for other in reversed(affected):
            if other is not child:
                self._stop_child(other)
        ids = tuple(c.spec.child_id for c in affected)
        delay = exponential(self._delay_min, self._delay_max, len(self._restarts) - 1)
        log.info("restarting %s in %.2fs", ", ".join(ids), delay)
        self._scheduler.tell_later(delay, self.actor_ref, RestartChildren(child_ids=ids))

    def _restart(self, ids: tuple[str, ...]) -> None:
        if self._stopping:
            return
        for child_id in ids:
            child = self._child(child_id)
            if child is None or child.ref is not None:
                continue
            error = self._start_child(child)
            if error is not None:
                log.error("restart of %s failed: %s", child_id, error)
                self._schedule_restart(child)
                return
            log.info("restarted %s (generation %d)", child_id, child.generation)
            self._restart_total += 1
            self._peers.tell(
                Role.STATUS,
                ActorRestarted(child_id=child_id, total=self._restart_total),
                optional=True,
            )

    def _shutdown(self, reason: str, code: int) -> None:
        if self._stopping:
            return
        self._stopping = True
        (log.error if code else log.info)("shutting down: %s", reason)
        self._peers.tell(Role.STATUS, AgentStopping(reason=reason, exit_code=code), optional=True)
        for child in reversed(self._children):
            self._stop_child(child)
        self._on_exit(code, reason)
        self.stop()


class Supervisor:
    """Runs a :class:`SupervisorActor` and waits for it in the calling (main) thread."""

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        max_restarts: int = 5,
        period_s: float = 30.0,
        restart_delay: tuple[float, float] = (0.1, 2.0),
        peers: Peers | None = None,
        scheduler: Scheduler | None = None,
        clock: Clock | None = None,
        shutdown_deadline: float = 10.0,
    ) -> None:
        self.peers = peers or Peers()
        self._owns_scheduler = scheduler is None
        self.clock = clock or SystemClock()
        self.scheduler = scheduler or ThreadScheduler(self.clock)
        self._specs = specs
        self._options = {
            "strategy": strategy,
            "max_restarts": max_restarts,
            "period_s": period_s,
            "restart_delay": restart_delay,
        }
        self._deadline = shutdown_deadline
        self._done = threading.Event()
        self.exit_code: int | None = None
        self.exit_reason = ""
        self.ref: pykka.ActorRef[SupervisorActor] | None = None

    def _exited(self, code: int, reason: str) -> None:
        self.exit_code, self.exit_reason = code, reason
        self._done.set()

    def start(self) -> Supervisor:
        self.ref = SupervisorActor.start(
            self._specs,
            peers=self.peers,
            scheduler=self.scheduler,
            clock=self.clock,
            on_exit=self._exited,
            **self._options,
        )
        return self

    def request_shutdown(self, reason: str, exit_code: int = 0) -> None:
        if self.ref is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self.ref.tell(Shutdown(reason=reason, exit_code=exit_code))

    def wait(self, timeout: float | None = None) -> int | None:
        self._done.wait(timeout)
        return self.exit_code

    def stop(self, reason: str = "stop requested") -> int:
        """Orderly shutdown within ``shutdown_deadline`` seconds, then sweep leftovers."""
        started = time.monotonic()
        self.request_shutdown(reason)
        if not self._done.wait(self._deadline):
            log.error("shutdown did not finish within %.0fs", self._deadline)
        left = self._deadline - (time.monotonic() - started)
        if self.ref is not None:
            with contextlib.suppress(pykka.Timeout, pykka.ActorDeadError):
                self.ref.stop(block=True, timeout=max(0.5, left))
        for ref in pykka.ActorRegistry.get_all():
            log.error("bug: actor %s still running after shutdown; stopping it", ref)
            with contextlib.suppress(pykka.Timeout, pykka.ActorDeadError):
                ref.stop(block=True, timeout=1)
        if self._owns_scheduler and isinstance(self.scheduler, ThreadScheduler):
            self.scheduler.stop()
        return self.exit_code if self.exit_code is not None else 0

    def run(self) -> int:
        """Start, install signal handlers, block until exit; returns the process exit code."""
        stop_reason: list[str] = []

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            if stop_reason:
                log.warning("%s again; still shutting down", name)
                return
            stop_reason.append(name)
            log.info("received %s, stopping", name)
            self.request_shutdown(f"received {name}")

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        signal.signal(signal.SIGUSR1, pykka.debug.log_thread_tracebacks)
        try:
            self.start()
            if stop_reason:  # signalled before self.ref existed: request_shutdown was a no-op
                self.request_shutdown(f"received {stop_reason[0]}")
            while not self._done.wait(0.5):
                pass
            return self.stop(self.exit_reason)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
