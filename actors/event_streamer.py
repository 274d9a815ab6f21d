"""EventStreamer: owns the Docker event subscription (PROTOCOL §5.1).

A reader thread iterates docker-py's event stream; each new container event is numbered by the
cursor and told straight to the subscriber the composition root names to forward it (the
Connection, which sends it as ``container_event``): an actor hop on the way to the hub would buy
nothing but latency (issue 13). The reader then tells the actor, which does the bookkeeping off
that path: it tells the other subscribers (the DockerGateway's cache, the stats streams) the
actions each asked for, and the status.
When the stream breaks — dockerd restarted, socket gone — the actor resubscribes with
``since=<last event time>`` and drops the events it already forwarded, so nothing is lost or sent
twice. The resume point lives in an :class:`EventCursor` that survives actor restarts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias, assert_never

import docker

from actors.base import ActorContext, RepeatLimiter, SupervisedActor, TimerHandle
from actors.runtime.backoff import Backoff
from actors.runtime.docker_client import client_factory as docker_clients
from actors.runtime.docker_http import LeanDocker, lean_address
from actors.runtime.threads import Guarded, HelperThread, tell_or_close, tell_quietly
from messages.docker import (
    ContainerEventObserved,
    DockerEventReceived,
    EventsConfirmed,
    EventsReplay,
    EventStreamEnded,
    ReplayEvents,
    Resubscribe,
)
from messages.roles import Role, Subscriber
from messages.status import EventForwarded, PublishStatus

log = logging.getLogger(__name__)

#: every message this actor accepts (besides Ping); anything else is logged and dropped
Inbox: TypeAlias = (
    DockerEventReceived
    | EventsConfirmed
    | ReplayEvents
    | EventStreamEnded
    | Resubscribe
    | PublishStatus
)


class EventCursor:
    """Where to resume, and the events not yet confirmed by the backend.

    Shared by successive EventStreamer generations (the supervisor's factory holds it), so a
    restarted streamer resumes with ``since=`` instead of starting from "now". It is also the
    event outbox: each accepted event is numbered and kept until the Connection reports that a
    pong proved the backend read it; after a reconnect — or a restart of either actor — the
    unconfirmed events are replayed in order.
    """

    def __init__(self, start_ns: int, memory: int = 4096, limit: int = 10_000) -> None:
        self._lock = threading.Lock()
        self.since_ns = start_ns
        self._seen: deque[tuple[int, str, str]] = deque(maxlen=memory)
        self._seen_set: set[tuple[int, str, str]] = set()
        self._limit = limit
        self._seq = 0
        self._pending: dict[int, ContainerEventObserved] = {}
        self.dropped = 0

    def since_param(self) -> int:
        """Whole seconds, rounded down: the overlap is replayed and dropped by :meth:`accept`."""
        with self._lock:
            return self.since_ns // 1_000_000_000

    def accept(
        self,
        event: ContainerEventObserved,
        deliver: Callable[[ContainerEventObserved], object] | None = None,
    ) -> ContainerEventObserved | None:
        """The event, numbered and kept until confirmed; None if it was already seen.

        ``deliver`` is called with the numbered event under the cursor's lock, so deliveries
        follow the numbering even from two threads, and never cross a :meth:`replay`.
        """
        key = event.key
        with self._lock:
            if key in self._seen_set or event.time_nano < self.since_ns - 1_000_000_000:
                return None
            if len(self._seen) == self._seen.maxlen:
                self._seen_set.discard(self._seen[0])
            self._seen.append(key)
            self._seen_set.add(key)
            self.since_ns = max(self.since_ns, event.time_nano)
            self._forget_before(self.since_ns - 1_000_000_000)
            self._seq += 1
            if len(self._pending) >= self._limit:
                del self._pending[next(iter(self._pending))]
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.error(
                        "more than %d container events not confirmed by DockMon: dropped the "
                        "oldest (%d so far)",
                        self._limit,
                        self.dropped,
                    )
            floor = next(iter(self._pending), self._seq)  # the oldest still unconfirmed
            numbered = dataclasses.replace(event, seq=self._seq, floor=floor)
            self._pending[self._seq] = numbered
            if deliver is not None:
                deliver(numbered)
            return numbered

    def _forget_before(self, oldest_ns: int) -> None:
        """Drop the keys older than the resume window: the time check above refuses those
        events anyway, so only the last second's keys are worth their memory (a few hundred
        bytes each; ``memory`` of them stayed after any burst before)."""
        seen = self._seen
        while seen and seen[0][0] < oldest_ns:
            self._seen_set.discard(seen.popleft())

    @property
    def remembered(self) -> int:
        """How many keys the duplicate check holds."""
        with self._lock:
            return len(self._seen)

    def confirm(self, seqs: tuple[int, ...]) -> None:
        with self._lock:
            for seq in seqs:
                self._pending.pop(seq, None)

    def unconfirmed(self) -> tuple[ContainerEventObserved, ...]:
        with self._lock:
            return tuple(self._pending.values())

    def replay(self, deliver: Callable[[tuple[ContainerEventObserved, ...]], object]) -> None:
        """``deliver`` every unconfirmed event, under the lock: an event accepted (and
        delivered) meanwhile is either in the replay or delivered after it, never before."""
        with self._lock:
            deliver(tuple(self._pending.values()))


def _failure_class(reason: str) -> str:
    """What makes two stream endings "the same failure": the text without numbers."""
    return "".join(c for c in reason if not c.isdigit())


#: one subscription: the events stream (docker-py's or the lean one) and the client it came from
_Subscription = tuple[Any, "docker.APIClient | LeanDocker"]


def _unsubscribe(subscription: _Subscription) -> None:
    stream, client = subscription
    try:
        stream.close()  # how a blocked iteration is stopped (either stream's close)
    finally:
        client.close()


def parse_event(raw: Mapping[str, Any]) -> ContainerEventObserved | None:
    """A Docker ``/events`` object -> typed container event (None for other types)."""
    if raw.get("Type") != "container":
        return None
    actor = raw.get("Actor") or {}
    attributes = {str(k): str(v) for k, v in (actor.get("Attributes") or {}).items()}
    time_nano = int(raw.get("timeNano") or int(raw.get("time", 0)) * 1_000_000_000)
    return ContainerEventObserved(
        container_id=str(actor.get("ID") or raw.get("id") or ""),
        container_name=attributes.get("name", ""),
        image=attributes.get("image", ""),
        action=str(raw.get("Action") or raw.get("status") or ""),
        time=int(raw.get("time") or time_nano // 1_000_000_000),
        time_nano=time_nano,
        attributes=tuple(sorted(attributes.items())),
    )


class EventStreamerActor(SupervisedActor):
    def __init__(
        self,
        ctx: ActorContext,
        *,
        docker_host: str,
        cursor: EventCursor,
        forward_to: Subscriber,
        event_subscribers: tuple[Subscriber, ...],
        client_factory: Callable[[], docker.APIClient] | None = None,
        retry_delay: tuple[float, float] = (0.2, 5.0),
        docker_api_version: str | None = None,
    ) -> None:
        super().__init__(ctx)
        self._docker_host = docker_host
        self._cursor = cursor
        # told each new container event from the reader thread, in the cursor's order
        self._forward_to = forward_to
        # told by the actor afterwards, in this order, the actions each asked for
        self._subscribers = event_subscribers
        self._client_factory = client_factory or docker_clients(
            docker_host, timeout=30, api_version=docker_api_version
        )
        # the lean stream where it applies (unix:// and plain tcp://): docker-py's decoding
        # cost the reader about 1.8x the CPU per event; not with an injected client (fakes)
        address = lean_address(docker_host) if client_factory is None else None
        self._lean: Callable[[], LeanDocker] | None = (
            None
            if address is None
            else lambda: LeanDocker(address, timeout=30, api_version=docker_api_version)
        )
        self._retry = Backoff(*retry_delay, jitter=False)  # reset by an event
        self._end_log = RepeatLimiter(first=60.0, maximum=3600.0)
        self._generation = 0
        self._thread: HelperThread | None = None
        # one per generation: closing it ends that reader, even one still inside events()
        self._subscription: Guarded[_Subscription] | None = None
        self._timer: TimerHandle | None = None
        self.forwarded = 0
        self._report_pending = False
        self._last_forwarded_ns = 0

    def on_start(self) -> None:
        # a restarted streamer: whatever its predecessor had not delivered, before the new
        # reader tells the Connection anything
        self._replay()
        self._subscribe()

    def _replay(self) -> None:
        peers, to = self.ctx.peers, self._forward_to
        self._cursor.replay(
            lambda events: peers.tell(to.role, EventsReplay(events=events), optional=to.optional)
        )

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._close_stream()
        if self._thread is not None:
            self._thread.join(2.0)

    def handle(self, message: object) -> Any:
        if not isinstance(message, Inbox):
            log.warning("EventStreamer ignored %s", type(message).__name__)
            return None
        match message:
            case DockerEventReceived(generation=gen, event=event):
                if gen == self._generation:
                    if self._retry.failures:
                        log.info("Docker event stream is back")
                    self._retry.reset()
                    self._end_log.clear()
                if event.seq:  # new: the reader numbered it and told the Connection already
                    self.forwarded += 1
                    for sub in self._subscribers:
                        if sub.actions is None or event.action in sub.actions:
                            self.ctx.peers.tell(sub.role, event, optional=sub.optional)
                    self._report(event)
            case EventsConfirmed(seqs=seqs):
                self._cursor.confirm(seqs)
            case ReplayEvents():
                self._replay()
            case EventStreamEnded(generation=gen, reason=reason) if gen == self._generation:
                self._stream_ended(reason)
            case Resubscribe(generation=gen) if gen == self._generation:
                self._subscribe()
            case PublishStatus():
                self._publish()
            case EventStreamEnded() | Resubscribe():
                pass  # from an older stream
            case _:
                assert_never(message)
        return None

    def _report(self, event: ContainerEventObserved) -> None:
        """At most one EventForwarded a second; the last of a burst follows by timer."""
        self._last_forwarded_ns = self.ctx.clock.time_ns()
        if self._report_pending:
            return
        self._report_pending = True
        self.tell_self_later(1.0, PublishStatus())

    def _publish(self) -> None:
        self._report_pending = False
        status = EventForwarded(at_ns=self._last_forwarded_ns, total=self.forwarded)
        self.ctx.peers.tell(Role.STATUS, status, optional=True)

    def _stream_ended(self, reason: str) -> None:
        self._close_stream()
        if self._thread is not None:
            self._thread.join(2.0)
        delay = self._retry.next_delay()
        # the same failure again and again (Docker down): logged once, then at a backoff
        skipped = self._end_log.check(_failure_class(reason), self.ctx.clock.monotonic())
        if skipped is None:
            log.debug("Docker event stream ended (%s); resubscribing in %.1fs", reason, delay)
        else:
            more = f" ({skipped} more such failures were not logged)" if skipped else ""
            log.warning(
                "Docker event stream ended (%s); resubscribing in %.1fs%s", reason, delay, more
            )
        self._timer = self.tell_self_later(delay, Resubscribe(generation=self._generation))

    def _subscribe(self) -> None:
        self._generation += 1
        generation, since = self._generation, self._cursor.since_param()
        subscription: Guarded[_Subscription] = Guarded(dispose=_unsubscribe)
        self._subscription = subscription
        self._thread = HelperThread(
            "EventStreamer-reader", lambda: self._read(generation, since, subscription)
        )
        self._thread.start()

    def _close_stream(self) -> None:
        if self._subscription is not None:
            self._subscription.dispose()

    def _read(self, generation: int, since: int, subscription: Guarded[_Subscription]) -> None:
        """The reader thread: each new container event to ``forward_to`` (numbered by the
        cursor), every container event to the actor (seq 0: seen before), then why the stream
        ended."""
        ref, cursor, peers, to = self.actor_ref, self._cursor, self.ctx.peers, self._forward_to
        lean = self._lean

        def deliver(numbered: ContainerEventObserved) -> None:
            peers.tell(to.role, numbered, optional=to.optional)

        reason = "stream ended"
        try:
            client: docker.APIClient | LeanDocker
            client = lean() if lean is not None else self._client_factory()
            try:
                if isinstance(client, LeanDocker):
                    stream: Any = client.events(since=since, filters={"type": ["container"]})
                else:
                    stream = client.events(
                        since=since, filters={"type": ["container"]}, decode=True
                    )
            except BaseException:
                with contextlib.suppress(Exception):
                    client.close()
                raise
            if not subscription.adopt((stream, client)):  # released while events() ran
                return
            for raw in stream:
                event = parse_event(raw)
                if event is None:
                    continue
                if subscription.closed:  # superseded: its events come from the next stream
                    return
                numbered = cursor.accept(event, deliver)
                message = DockerEventReceived(generation=generation, event=numbered or event)
                if not tell_or_close(ref, message, subscription):  # the actor is gone
                    return
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
        tell_quietly(ref, EventStreamEnded(generation=generation, reason=reason))
