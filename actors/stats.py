"""StatsActor: container stats (PROTOCOL §5.2), host stats (§5.3) and the stats ingest (§1.5).

* Container stats: one Docker stats stream per running container, all multiplexed on one
  selector thread, started with the first stream and stopped a second after the last
  (:mod:`actors.telemetry.streams`; bench/stats_design.py has the measurements that chose
  this over a thread per stream or one-shot polling). Each sample becomes a
  ``container_stats`` event (never buffered) and is also offered to the ingest socket.
  Streams follow container events (start/restart add, die/stop/kill remove); on every
  (re)connect the running set is taken from Docker again, and events that arrive while that
  listing is in flight are replayed on top of it.
* Host stats: every 2 s while connected, read from /proc and /sys (or /host/proc, /host/sys);
  the first sample after a connect reports CPU and network as 0.
* Stats ingest: only if a permanent token is known when the actor starts (see
  :mod:`actors.link.ingest`).

While the control connection is down nothing is collected (as in the Go agent, stats are
per-connection state). The actor starts active, so a restarted StatsActor under a live
connection resumes at once; samples sent before the first registration are simply dropped by
the Connection.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any, TypeAlias, assert_never

import pykka

from actors.base import ActorContext, RepeatLimiter, SupervisedActor, TimerHandle
from actors.errors import TransientError
from actors.link.ingest import IngestLink
from actors.link.websocket import LinkSettings
from actors.runtime.backoff import Backoff
from actors.telemetry.stats_math import (
    HostRoots,
    HostStatsSampler,
    container_reading,
    container_stats_payload,
)
from actors.telemetry.streams import StatsStreams
from messages.common import RawJson
from messages.docker import STATS_ACTIONS, ContainerEventObserved
from messages.outbound import EventOut, LinkStateChanged, RawFrameOut
from messages.records import record
from messages.roles import Role
from messages.stats import (
    ApplyStreamChanges,
    HostStatsTick,
    ParkStreams,
    RetryListing,
    RunningContainersListed,
    StatsBatch,
    StatsSampled,
    StatsStreamEnded,
)
from messages.tokens import GetToken, TokenInfo

log = logging.getLogger(__name__)

#: every message this actor accepts (besides Ping); anything else is logged and dropped
Inbox: TypeAlias = (
    StatsSampled
    | StatsBatch
    | ApplyStreamChanges
    | ContainerEventObserved
    | StatsStreamEnded
    | RunningContainersListed
    | RetryListing
    | HostStatsTick
    | ParkStreams
    | LinkStateChanged
)

ADD_ACTIONS = frozenset({"start", "restart"})
REMOVE_ACTIONS = frozenset({"die", "stop", "kill"})
assert ADD_ACTIONS | REMOVE_ACTIONS == STATS_ACTIONS  # what the EventStreamer tells us
#: the streams' loop gathers what is ready this long after a wake-up (fewer wake-ups; a sample
#: a second per stream is never held up by more than this plus the batch interval)
STREAMS_POLL_PAUSE = 0.1
#: stream opens and closes asked for by events wait this long and go together: off the event
#: forwarding path, and a container that starts and dies within it never costs a stream
STREAM_SETTLE = 0.5
#: the streams' loop thread ends this long after the last stream closed (a container that
#: restarts keeps it)
PARK_AFTER_S = 1.0


@record(kw_only=True)
class StatsSettings:
    docker_host: str
    docker_api_version: str | None = None
    #: where host stats come from; None: don't send host stats (in a container without /host)
    host_roots: HostRoots | None
    #: ingest socket settings (URL + the control socket's TLS/proxy); None: never
    ingest: LinkSettings | None = None
    host_interval: float = 2.0
    #: retry a failed listing after [0] s, doubling up to [1] s while it keeps failing
    listing_retry: tuple[float, float] = (2.0, 60.0)
    ingest_backoff: tuple[float, float] = (1.0, 30.0)


StreamsFactory = Callable[..., StatsStreams]
IngestFactory = Callable[..., IngestLink]


class StatsActor(SupervisedActor):
    def __init__(
        self,
        ctx: ActorContext,
        *,
        settings: StatsSettings,
        streams_factory: StreamsFactory = StatsStreams,
        ingest_factory: IngestFactory = IngestLink,
    ) -> None:
        super().__init__(ctx)
        self._settings = settings
        self._streams_factory = streams_factory
        self._ingest_factory = ingest_factory
        self._streams: StatsStreams | None = None
        self.ingest: IngestLink | None = None
        self._host = HostStatsSampler(settings.host_roots) if settings.host_roots else None
        self._active = False
        self._tokens = 0
        self._tracked: dict[str, tuple[int, str]] = {}  # container id -> (stream token, name)
        self._listing = 0  # current listing request; replies to older ones are stale
        self._listing_pending = False
        self._journal: list[ContainerEventObserved] = []  # events seen while listing
        #: stream changes events asked for, applied together: id -> (closed, opened, name)
        self._changes: dict[str, tuple[bool, bool, str]] = {}
        self._changes_generation = 0
        self._changes_timer: TimerHandle | None = None
        self._host_generation = 0
        self._host_timer: TimerHandle | None = None
        self._retry_timer: TimerHandle | None = None
        self._park_generation = 0
        self._park_timer: TimerHandle | None = None
        self._listing_retry = Backoff(*settings.listing_retry, jitter=False)
        self._listing_log = RepeatLimiter(first=60.0, maximum=3600.0)
        self.samples_sent = 0

    # --- lifecycle ------------------------------------------------------------------------------

    def on_start(self) -> None:
        ref = self.actor_ref
        self._streams = self._streams_factory(
            self._settings.docker_host,
            api_version=self._settings.docker_api_version,
            on_sample=lambda cid, token, sample: _tell(
                ref, StatsSampled(container_id=cid, token=token, reading=container_reading(sample))
            ),
            poll_pause=STREAMS_POLL_PAUSE,
            on_samples=lambda samples: _tell(
                ref,
                StatsBatch(
                    samples=tuple(
                        StatsSampled(container_id=c, token=t, reading=container_reading(s))
                        for c, t, s in samples
                    )
                ),
            ),
            on_ended=lambda cid, token, reason, gone: _tell(
                ref, StatsStreamEnded(container_id=cid, token=token, reason=reason, gone=gone)
            ),
            on_listed=lambda request, containers, error: _tell(
                ref, RunningContainersListed(request=request, containers=containers, error=error)
            ),
        )
        self._start_ingest()
        if self._host is None:
            log.info("host stats off: running in a container without /host/proc mounted")
        self._activate()

    def _start_ingest(self) -> None:
        if self._settings.ingest is None:
            return
        try:
            info: TokenInfo = self.ctx.peers.ask(Role.TOKEN_STORE, GetToken(), timeout=5)
        except TransientError as exc:
            log.warning("stats ingest off: cannot get the token: %s", exc)
            return
        if info.kind != "permanent":
            log.info("stats ingest off until the next start: no permanent token yet")
            return
        self.ingest = self._ingest_factory(
            self._settings.ingest, info.token, backoff=self._settings.ingest_backoff
        )
        self.ingest.start()

    def _release(self) -> None:
        self._active = False
        for timer in (self._host_timer, self._retry_timer, self._park_timer):
            if timer is not None:
                timer.cancel()
        if self._streams is not None:
            self._streams.stop()
        if self.ingest is not None:
            self.ingest.stop()

    # --- dispatch -------------------------------------------------------------------------------

    def handle(self, message: object) -> Any:
        if not isinstance(message, Inbox):
            log.warning("StatsActor ignored %s", type(message).__name__)
            return None
        match message:
            case StatsSampled():
                self._sampled(message)
            case StatsBatch(samples=samples):
                for sampled in samples:
                    self._sampled(sampled)
            case ContainerEventObserved():
                self._container_event(message)
            case StatsStreamEnded():
                self._stream_ended(message)
            case RunningContainersListed(request=request) if request == self._listing:
                self._listed(message)
            case RetryListing(request=request) if request == self._listing and self._active:
                self._request_listing()
            case HostStatsTick(generation=gen) if gen == self._host_generation:
                self._host_tick()
            case ApplyStreamChanges(generation=gen) if gen == self._changes_generation:
                self._apply_changes()
            case ParkStreams(generation=gen) if gen == self._park_generation:
                self._park_timer = None
                if not self._tracked and self._streams is not None:
                    self._streams.park()
            case LinkStateChanged(connected=True):
                self._activate()
            case LinkStateChanged():  # disconnected
                self._deactivate()
            case (
                RunningContainersListed()
                | RetryListing()
                | HostStatsTick()
                | ApplyStreamChanges()
                | ParkStreams()
            ):
                pass  # stale
            case _:
                assert_never(message)
        return None

    @property
    def tracked(self) -> dict[str, str]:
        """Container id -> name of every container with an open stats stream."""
        return {cid: name for cid, (_, name) in self._tracked.items()}

    # --- activity follows the control connection ---------------------------------------------

    def _activate(self) -> None:
        """Take the running set from Docker (streams still wanted stay open); host baseline."""
        self._active = True
        self._request_listing()
        if self._host_timer is not None:
            self._host_timer.cancel()
        if self._host is not None:
            self._host.reset()
            self._host_generation += 1
            self._host_tick()  # the baseline sample goes out at once

    def _deactivate(self) -> None:
        self._active = False
        self._listing += 1
        self._listing_pending = False
        self._journal.clear()
        self._drop_changes()
        self._host_generation += 1
        for timer in (self._host_timer, self._retry_timer):
            if timer is not None:
                timer.cancel()
        self._host_timer = self._retry_timer = None
        for cid in list(self._tracked):
            self._untrack(cid)

    # --- container streams --------------------------------------------------------------------

    def _request_listing(self) -> None:
        assert self._streams is not None
        self._listing += 1
        self._listing_pending = True
        self._journal.clear()
        self._streams.list_running(self._listing)

    def _listed(self, msg: RunningContainersListed) -> None:
        if msg.containers is None:
            delay = self._listing_retry.next_delay()
            skipped = self._listing_log.check(msg.error, self.ctx.clock.monotonic())
            line = "cannot list running containers for stats (%s); retrying in %.0fs%s"
            if skipped is None:  # the same failure again: logged once, then at a backoff
                log.debug(line, msg.error, delay, "")
            else:
                more = f" ({skipped} more such failures were not logged)" if skipped else ""
                log.warning(line, msg.error, delay, more)
            self._retry_timer = self.tell_self_later(delay, RetryListing(request=self._listing))
            return
        if self._listing_retry.failures:
            log.info("listing running containers for stats works again")
        self._listing_retry.reset()
        self._listing_log.clear()
        wanted = dict(msg.containers)
        for event in self._journal:  # what happened after Docker answered wins
            if event.action in ADD_ACTIONS:
                wanted[event.container_id] = event.container_name
            elif event.action in REMOVE_ACTIONS:
                wanted.pop(event.container_id, None)
        self._journal.clear()
        self._listing_pending = False
        for cid, name in wanted.items():  # before the untracking: the loop stays up between
            self._track(cid, name)
        for cid in [c for c in self._tracked if c not in wanted]:
            self._untrack(cid)
        log.info("collecting stats for %d running containers", len(self._tracked))

    def _container_event(self, event: ContainerEventObserved) -> None:
        if not self._active:
            return  # the listing at the next connect resyncs
        if self._listing_pending:
            self._journal.append(event)
        added, removed = event.action in ADD_ACTIONS, event.action in REMOVE_ACTIONS
        if not (added or removed):
            return
        closed, _, name = self._changes.get(event.container_id, (False, False, ""))
        self._changes[event.container_id] = (
            closed or removed,
            added,
            event.container_name if added else name,
        )
        if self._changes_timer is None:
            self._changes_timer = self.tell_self_later(
                STREAM_SETTLE, ApplyStreamChanges(generation=self._changes_generation)
            )

    def _apply_changes(self) -> None:
        """What the events since the last batch asked for: a stream closed if a die/stop/kill
        came, (re)opened if the last word was a start/restart; start-then-die leaves none."""
        changes = self._changes
        self._drop_changes()
        for cid, (closed, opened, name) in changes.items():
            if closed:
                self._untrack(cid)
            if opened:
                self._track(cid, name)

    def _drop_changes(self) -> None:
        self._changes = {}
        self._changes_generation += 1
        if self._changes_timer is not None:
            self._changes_timer.cancel()
            self._changes_timer = None

    def _track(self, container_id: str, name: str) -> None:
        current = self._tracked.get(container_id)
        if current is not None:
            self._tracked[container_id] = (current[0], name or current[1])
            return
        assert self._streams is not None
        self._tokens += 1
        self._tracked[container_id] = (self._tokens, name)
        if self._park_timer is not None:  # the loop is wanted again
            self._park_timer.cancel()
            self._park_timer = None
            self._park_generation += 1
        self._streams.open(container_id, self._tokens)

    def _untrack(self, container_id: str) -> None:
        if self._tracked.pop(container_id, None) is not None and self._streams is not None:
            self._streams.close(container_id)
            self._park_if_idle()

    def _stream_ended(self, msg: StatsStreamEnded) -> None:
        current = self._tracked.get(msg.container_id)
        if current is None or current[0] != msg.token:
            return
        del self._tracked[msg.container_id]
        log.debug("stats stream of %s ended: %s", msg.container_id[:12], msg.reason)
        self._park_if_idle()

    def _park_if_idle(self) -> None:
        """The last stream closed: its loop thread ends PARK_AFTER_S later, unless a stream
        opens meanwhile (a container restarting, a burst of short-lived ones)."""
        if not self._tracked and self._streams is not None and self._park_timer is None:
            self._park_generation += 1
            self._park_timer = self.tell_self_later(
                PARK_AFTER_S, ParkStreams(generation=self._park_generation)
            )

    def _sampled(self, msg: StatsSampled) -> None:
        current = self._tracked.get(msg.container_id)
        if not self._active or current is None or current[0] != msg.token:
            return  # a stream we already closed
        if msg.reading is None:
            return  # not running (any more): the die event or the stream's end follows
        payload = RawJson.of(
            container_stats_payload(
                container_id=msg.container_id,
                container_name=current[1],
                reading=msg.reading,
                time_ns=self.ctx.clock.time_ns(),
            )
        )
        self.ctx.peers.tell(
            Role.CONNECTION, EventOut(command="container_stats", payload=payload, buffer=False)
        )
        self.samples_sent += 1
        if self.ingest is not None:
            self.ingest.offer(payload.text)

    # --- host stats ---------------------------------------------------------------------------

    def _host_tick(self) -> None:
        if self._host is None or not self._active:
            return
        stats = self._host.sample(self.ctx.clock.monotonic())
        if stats is not None:
            self.ctx.peers.tell(
                Role.CONNECTION, RawFrameOut(frame=RawJson.of({"type": "stats", "stats": stats}))
            )
        self._host_timer = self.tell_self_later(
            self._settings.host_interval, HostStatsTick(generation=self._host_generation)
        )


def _tell(ref: pykka.ActorRef[Any], message: Any) -> None:
    """From the streams thread: an actor that is gone no longer cares."""
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)
