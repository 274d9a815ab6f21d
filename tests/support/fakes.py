"""Fakes at the actors' I/O seams: a manual clock and scheduler, probe actors, a fake link."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import pykka

from actors.base import ActorContext, Clock, Peers
from actors.link.websocket import LinkSettings
from messages.roles import Role

T = TypeVar("T")


class FakeClock:
    def __init__(self, start: float = 1000.0, wall_ns: int = 1_750_000_000_000_000_000) -> None:
        self.now = start
        self.wall_ns = wall_ns

    def monotonic(self) -> float:
        return self.now

    def time_ns(self) -> int:
        return self.wall_ns + int(self.now * 1e9)


@dataclass(eq=False)
class _FakeTimer:
    due: float
    ref: pykka.ActorRef[Any]
    message: Any
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeScheduler:
    """``advance(s)`` moves the clock and tells every timer that came due, in due order.

    ``fired`` counts the timers told, by message type (mailbox traffic for soak tests).
    """

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self.timers: list[_FakeTimer] = []
        self.fired: Counter[str] = Counter()

    def tell_later(self, delay: float, ref: pykka.ActorRef[Any], message: Any) -> _FakeTimer:
        timer = _FakeTimer(self.clock.now + max(0.0, delay), ref, message)
        with self._lock:
            self.timers.append(timer)
        return timer

    def pending(self, kind: type | None = None) -> list[_FakeTimer]:
        with self._lock:
            return [
                t
                for t in self.timers
                if not t.cancelled and (kind is None or isinstance(t.message, kind))
            ]

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        with self._lock:  # a cancelled timer is gone for good: don't keep it (or its message)
            self.timers = [t for t in self.timers if not t.cancelled]
        while True:
            with self._lock:
                due = sorted(
                    (t for t in self.timers if not t.cancelled and t.due <= self.clock.now),
                    key=lambda t: t.due,
                )
                if not due:
                    return
                timer = due[0]
                self.timers.remove(timer)
                self.fired[type(timer.message).__name__] += 1
            with contextlib.suppress(pykka.ActorDeadError):
                timer.ref.tell(timer.message)


class _Inbox:
    def __init__(self) -> None:
        self.received: list[Any] = []
        self.cond = threading.Condition()


class Probe(pykka.ThreadingActor):
    """Records every message; answers asks with ``responder(message)``."""

    def __init__(self, inbox: _Inbox, responder: Callable[[Any], Any] | None = None) -> None:
        super().__init__()
        self.inbox = inbox
        self.responder = responder

    def on_receive(self, message: Any) -> Any:
        with self.inbox.cond:
            self.inbox.received.append(message)
            self.inbox.cond.notify_all()
        return self.responder(message) if self.responder else None


class ProbeHandle:
    def __init__(self, responder: Callable[[Any], Any] | None = None) -> None:
        self._inbox = _Inbox()
        self.ref = Probe.start(self._inbox, responder)

    @property
    def received(self) -> list[Any]:
        with self._inbox.cond:
            return list(self._inbox.received)

    def expect(
        self, kind: type[T], timeout: float = 3.0, where: Callable[[T], bool] | None = None
    ) -> T:
        """Wait for (and consume) the first matching message."""
        inbox = self._inbox

        def find() -> T | None:
            for i, m in enumerate(inbox.received):
                if isinstance(m, kind) and (where is None or where(m)):
                    del inbox.received[i]
                    return m
            return None

        with inbox.cond:
            found = inbox.cond.wait_for(find, timeout)
        if found is None:
            seen = [type(m).__name__ for m in self.received]
            raise AssertionError(f"no {kind.__name__} within {timeout}s; got {seen}")
        return found


def make_ctx(
    peers: Peers, scheduler: Any, clock: Clock, *, child_id: str = "x", supervisor: Any = None
) -> ActorContext:
    return ActorContext(
        child_id=child_id,
        generation=1,
        peers=peers,
        scheduler=scheduler,
        clock=clock,
        supervisor=supervisor,
    )


@dataclass
class GatewayRig:
    """A DockerGatewayActor on a fake clock, whose Connection is a probe."""

    ref: pykka.ActorRef[Any]
    connection: ProbeHandle
    scheduler: FakeScheduler

    def stop(self) -> None:
        self.ref.stop()
        self.connection.ref.stop()


def start_gateway(docker_host: str, *, peers: Peers | None = None, **options: Any) -> GatewayRig:
    """Start the gateway on ``docker_host`` with ``options`` (workers, client_factory, ...);
    ``peers`` may hold more probes, the Connection's is added. The caller stops it."""
    from actors.docker_gateway import DockerGatewayActor  # docker-py: only for these tests

    clock = FakeClock()
    scheduler = FakeScheduler(clock)
    peers = peers if peers is not None else Peers()
    connection = ProbeHandle()
    peers.set(Role.CONNECTION, connection.ref)
    ref = DockerGatewayActor.start(
        make_ctx(peers, scheduler, clock, child_id="docker_gateway"),
        docker_host=docker_host,
        **options,
    )
    return GatewayRig(ref, connection, scheduler)


class FakeLink:
    """Stands in for WebSocketLink: records what the actor sends; tests play the reader."""

    instances: ClassVar[list[FakeLink]] = []

    def __init__(
        self,
        settings: LinkSettings,
        generation: int,
        register_frame: str,
        notify: pykka.ActorRef[Any],
        clock: Clock,
    ) -> None:
        self.generation = generation
        self.register_frame = register_frame
        self.notify = notify
        self.sent: list[str] = []
        self.pings = 0
        self.acks: list[int] = []
        self.closed = False
        self.started = threading.Event()
        self.stuck_since: float | None = None
        self.ended_at: float | None = None
        self.clock = clock
        FakeLink.instances.append(self)

    def start(self) -> None:
        self.started.set()

    def send(self, text: str, ack: int = 0) -> None:
        """``ack``: the frame's number, which the real link's burst ping carries; kept in
        ``acks`` like a ping's, since that is what a pong may confirm."""
        self.sent.append(text)
        if ack:
            self.acks.append(ack)

    def send_direct(self, text: str, ack: int) -> None:
        self.send(text, ack)

    def ping(self, ack: int) -> None:
        self.pings += 1
        self.acks.append(ack)

    def send_stuck_for(self, now: float) -> float:
        return 0.0 if self.stuck_since is None else now - self.stuck_since

    def close(self, timeout: float = 2.0) -> None:
        self.closed = True
