"""Connection: owns the WebSocket to DockMon (PROTOCOL §1, §2, §9).

The actor never blocks: the socket and its reader and writer threads live in a
:class:`~actors.link.websocket.WebSocketLink` per connection attempt, which tells the actor what
it reads. Keepalive, dead-link detection and backoff run on the injected scheduler and clock.
Each frame is decoded once into an envelope (``messages.wire.decode_envelope``) that the policy
judges. The decisions are plain classes in :mod:`actors.session`: the link state, delivery
(frame numbers, unconfirmed frames, the outbox) and the audit bookkeeping; the actor does the
I/O (the link, the timers, the peers) and asks them what to do.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, TypeAlias, assert_never

from actors.base import (
    ActorContext,
    RepeatLimiter,
    SupervisedActor,
    TimerHandle,
)
from actors.errors import FatalError, TransientError
from actors.link.websocket import (
    MAX_MESSAGE_BYTES,
    LinkFactory,
    LinkSettings,
    WebSocketLink,
    control_url_for_log,
    frame_bytes,
)
from actors.rules.policy import AuditLog, Policy
from actors.runtime.backoff import Backoff
from actors.session.audit import AuditBook, AuditLine
from actors.session.delivery import Confirmed, Delivery, Receipt
from actors.session.state import LinkState
from messages.common import Secret
from messages.connection import (
    AttemptTimedOut,
    Dial,
    FrameReceived,
    HandOver,
    LinkOpened,
    PongReceived,
    ReaderStopped,
    ReplayDue,
    ResumeAfterHandOver,
    Tick,
)
from messages.docker import (
    CommandFailed,
    CommandSucceeded,
    ContainerEventObserved,
    ContainerOpFailed,
    ContainerOpSucceeded,
    DescribeHost,
    EventsConfirmed,
    EventsReplay,
    HostDescribed,
    ReplayEvents,
    Reply,
)
from messages.families import ROUTES
from messages.outbound import (
    AuditRecord,
    EventDelivered,
    EventOut,
    LinkStateChanged,
    RawFrameOut,
    TrackedEventOut,
)
from messages.roles import Role
from messages.status import ConnectionStatus, WriteFailed
from messages.timefmt import rfc3339_nano
from messages.tokens import GetToken, SaveToken, TokenInfo
from messages.wire import (
    AgentIdentity,
    AuthRejected,
    AuthSucceeded,
    IgnoredFrame,
    RejectedRequest,
    Request,
    decode_envelope,
    encode_container_event,
    encode_event,
    encode_register,
    encode_reply,
)

log = logging.getLogger(__name__)

#: every message this actor accepts (besides Ping); anything else is logged and dropped
Inbox: TypeAlias = (
    Dial
    | HostDescribed
    | LinkOpened
    | FrameReceived
    | PongReceived
    | ReaderStopped
    | Tick
    | ReplayDue
    | AttemptTimedOut
    | HandOver
    | ResumeAfterHandOver
    | ContainerEventObserved
    | EventsReplay
    | EventOut
    | RawFrameOut
    | TrackedEventOut
    | AuditRecord
    | CommandSucceeded
    | CommandFailed
    | ContainerOpSucceeded
    | ContainerOpFailed
)

#: confirmed container events told to the EventStreamer at once beyond this many (else at the
#: next tick, or when the link goes: always before the next ReplayEvents)
CONFIRM_BATCH = 256


@dataclass
class _Stats:
    connects: int = 0
    last_error: str = ""


class ConnectionActor(SupervisedActor):
    """The DockMon connection, one attempt after another (:class:`LinkState`)."""

    def __init__(
        self,
        ctx: ActorContext,
        *,
        settings: LinkSettings,
        identity: AgentIdentity,
        reconnect_initial: float,
        reconnect_max: float,
        link_subscribers: tuple[Role, ...],
        link_factory: LinkFactory = WebSocketLink,
        rng: random.Random | None = None,
        policy: Policy | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        super().__init__(ctx)
        #: told LinkStateChanged when the link comes up or goes down, each only if it runs
        self._link_subscribers = link_subscribers
        self._policy = policy or Policy()
        self._audit = audit
        self._book = AuditBook()  # which requests get which audit line; the pending ones
        self._settings = settings
        self._identity = identity
        self._link_factory = link_factory
        self._backoff = Backoff(reconnect_initial, reconnect_max, rng)
        self._failure_log = RepeatLimiter(first=60.0, maximum=600.0)  # same reason: not every try
        self._state = LinkState.WAITING
        self._attempt = 0
        self._link: WebSocketLink | None = None
        self._token: TokenInfo | None = None
        self._delivery = Delivery(settings.outbox_limit, settings.confirm_margin)
        self._events_confirmed: list[int] = []  # not yet told to the EventStreamer
        self._attempt_timer: TimerHandle | None = None
        self._tick_timer: TimerHandle | None = None
        self._last_heard = 0.0
        self._last_ping = 0.0
        self.stats = _Stats()
        self._status_connected = False
        self._status_since_ns = ctx.clock.time_ns()
        self._status_reported = 0.0

    # --- lifecycle ------------------------------------------------------------------------------

    def on_start(self) -> None:
        self._token = self.ctx.peers.ask(Role.TOKEN_STORE, GetToken(), timeout=5)
        log.info("connecting to %s", control_url_for_log(self._settings.url))
        self.actor_ref.tell(Dial())

    def _release(self) -> None:
        if self._audit is not None:
            self._audit.close()
        was_connected = self._state is LinkState.CONNECTED
        self._drop_link("agent stopping")
        self._state = LinkState.STOPPED
        if was_connected:
            self._notify_link(False)

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def unconfirmed(self) -> int:
        """Frames sent on this link that no pong has confirmed yet."""
        return self._delivery.unconfirmed

    @property
    def outbox_dropped(self) -> int:
        """Frames the full outbox dropped while disconnected."""
        return self._delivery.dropped

    # --- dispatch ---------------------------------------------------------------------------------

    def handle(self, message: object) -> Any:
        if not isinstance(message, Inbox):
            log.warning("Connection ignored %s", type(message).__name__)
            return None
        match message:
            case Dial():
                self._dial()
            case HostDescribed():
                self._host_described(message)
            case LinkOpened(generation=gen) if gen == self._attempt:
                self._link_opened()
            case FrameReceived(generation=gen, data=data) if gen == self._attempt:
                self._last_heard = self.ctx.clock.monotonic()
                self._frame(data)
            case PongReceived(generation=gen, ack=ack, at=at) if gen == self._attempt:
                self._last_heard = self.ctx.clock.monotonic()
                if ack is not None:
                    read_at = self._last_heard if at is None else at
                    self._confirmed(self._delivery.confirm(ack, read_at))
            case ReaderStopped(generation=gen) if gen == self._attempt:
                self._reader_stopped(message)
            case Tick(generation=gen) if gen == self._attempt:
                self._tick()
            case ReplayDue(generation=gen) if gen == self._attempt and self._connected():
                self._ask_replay()
            case AttemptTimedOut(generation=gen) if gen == self._attempt and self._handing_over():
                self._handed_over("close handshake timed out", echoed=False)
            case HandOver():
                self._hand_over()
            case ResumeAfterHandOver():
                self._resume_after_hand_over()
            case AttemptTimedOut(generation=gen, phase=phase) if gen == self._attempt:
                if self._state == phase:
                    self._attempt_failed(f"timed out while {phase}")
            case ContainerEventObserved():
                if not self._delivery.awaiting_replay:
                    self._send_event(message)
            case EventsReplay(events=events):
                self._delivery.awaiting_replay = False
                for event in events:
                    self._send_event(event)
            case EventOut(command=command, payload=payload, buffer=buffer):
                self._send(encode_event(command, payload, self.ctx.clock.time_ns()), buffer=buffer)
            case RawFrameOut(frame=frame, buffer=buffer):
                self._send(frame.text, buffer=buffer)
            case TrackedEventOut():
                self._send_tracked(message)
            case AuditRecord(operation=operation, target=target, result=result):
                self._record(operation, target, result)
            case (
                LinkOpened()
                | FrameReceived()
                | PongReceived()
                | ReaderStopped()
                | Tick()
                | ReplayDue()
                | AttemptTimedOut()
            ):
                pass  # from an older attempt
            case (
                CommandSucceeded() | CommandFailed() | ContainerOpSucceeded() | ContainerOpFailed()
            ):
                text, line = self._bounded_reply(message)
                self._send(text)
                self._write(line)  # after the reply is on its way: the disk is off its path
            case _:
                assert_never(message)
        return None

    # --- connection attempts ---------------------------------------------------------------

    def _dial(self) -> None:
        if self._state is not LinkState.WAITING:
            return
        self._attempt += 1
        self._state = LinkState.DESCRIBING
        self._arm_attempt_timer(self._settings.describe_timeout, LinkState.DESCRIBING)
        if not self.ctx.peers.tell(Role.DOCKER_GATEWAY, DescribeHost(attempt=self._attempt)):
            self._attempt_failed("docker gateway is not running")

    def _host_described(self, msg: HostDescribed) -> None:
        if msg.attempt != self._attempt or self._state is not LinkState.DESCRIBING:
            return
        if msg.info is None:
            self._attempt_failed(
                f"cannot register without Docker's engine id: {msg.error or 'unknown error'}"
            )
            return
        assert self._token is not None
        frame = encode_register(self._token.token, msg.info, self._identity)
        self._state = LinkState.DIALING
        self._arm_attempt_timer(self._settings.dial_timeout + 5, LinkState.DIALING)
        self._link = self._link_factory(
            self._settings, self._attempt, frame, self.actor_ref, self.ctx.clock
        )
        self._link.start()

    def _link_opened(self) -> None:
        self._state = LinkState.AUTHENTICATING
        self._last_heard = self.ctx.clock.monotonic()
        self._arm_attempt_timer(self._settings.auth_timeout, LinkState.AUTHENTICATING)

    def _frame(self, data: str | bytes) -> None:
        envelope = decode_envelope(data)
        if self._state is LinkState.AUTHENTICATING:
            match envelope:
                case AuthSucceeded():
                    self._authenticated(envelope)
                case AuthRejected(error=error):
                    self._auth_rejected(error)
                case _:
                    self._attempt_failed("expected auth_success or auth_error as first reply")
            return
        match envelope:
            case IgnoredFrame(reason=reason):
                log.warning("ignored a frame from DockMon: %s", reason)
            case AuthSucceeded() | AuthRejected():
                log.warning("ignored an unexpected %s", type(envelope).__name__)
            case Request():
                self._request(envelope)
            case _:
                assert_never(envelope)

    def _request(self, request: Request) -> None:
        """Refused (a duplicate id, the policy), answered (rejected), dropped, or routed."""
        if (duplicate := self._book.duplicate(request)) is not None:
            self._refuse_duplicate(request, duplicate)
            return
        denial = self._policy.judge(request)
        if denial is not None:
            self._deny(request, denial)
            return
        match request.body:
            case IgnoredFrame(reason=reason):
                log.warning("ignored a frame from DockMon: %s", reason)
            case RejectedRequest(reply=reply):
                log.warning("rejected a request from DockMon: %s", reply.error)
                self._write(self._book.rejected(request, reply.error))
                self._send(encode_reply(reply, self.ctx.clock.time_ns()))
            case command:
                self._write(self._book.accepted(request))
                self._route(request, command)

    def _deny(self, request: Request, denial: str) -> None:
        log.warning("refused %s: %s", _described(request), denial)
        self._write(self._book.denied(request, denial))
        if request.request_id is not None:
            reply = request.refusal(denial, "permission_denied")
            self._send(encode_reply(reply, self.ctx.clock.time_ns()))

    def _refuse_duplicate(self, request: Request, error: str) -> None:
        """One request id, one request: a second request under an id still pending never runs.

        Its refusal is audited at once; the first request keeps its own audit line (its result).
        """
        log.warning("refused %s: %s", _described(request), error)
        self._write(self._book.rejected(request, error))
        self._send(encode_reply(request.refusal(error), self.ctx.clock.time_ns()))

    def _write(self, line: AuditLine | None) -> None:
        if line is not None:
            self._record(line.operation, line.target, line.result)

    def _record(self, operation: str, target: str | None, result: str) -> None:
        if self._audit is not None:
            at = rfc3339_nano(self.ctx.clock.time_ns())
            if error := self._audit.record(at, operation, target, result):  # never raises
                self.ctx.peers.tell(
                    Role.STATUS, WriteFailed(what="audit", error=error), optional=True
                )

    def _route(self, request: Request, command: Any) -> None:
        role = ROUTES.get(type(command))
        if role is None:
            log.error("no route for %s", type(command).__name__)
            return
        if self.ctx.peers.tell(role, command):
            return
        if request.request_id is None:
            return  # fire-and-forget families (shell input, health configs) have no reply
        reply = request.refusal(f"{role} is restarting; try again")
        self._write(self._book.answered(reply))  # answered: no longer pending
        self._send(encode_reply(reply, self.ctx.clock.time_ns()))

    def _notify_link(self, connected: bool) -> None:
        for role in self._link_subscribers:
            self.ctx.peers.tell(role, LinkStateChanged(connected=connected), optional=True)
        self._report_status()

    def _report_status(self) -> None:
        connected = self._state is LinkState.CONNECTED
        if connected != self._status_connected:
            self._status_connected = connected
            self._status_since_ns = self.ctx.clock.time_ns()
        self._status_reported = self.ctx.clock.monotonic()
        self.ctx.peers.tell(
            Role.STATUS,
            ConnectionStatus(
                connected=connected,
                since_ns=self._status_since_ns,
                registrations=self.stats.connects,
                outbox_depth=self._delivery.outbox_depth,
                outbox_dropped=self._delivery.dropped,
                last_error=self.stats.last_error,
            ),
            optional=True,
        )

    def _authenticated(self, msg: AuthSucceeded) -> None:
        self._cancel_attempt_timer()
        self._state = LinkState.CONNECTED
        self._backoff.reset()
        self._failure_log.clear()
        self.stats.connects += 1
        if msg.permanent_token and (
            self._token is None
            or self._token.token != msg.permanent_token
            or self._token.kind != "permanent"
        ):
            self._persist(msg.permanent_token)
        queued = self._delivery.take_outbox()
        log.info(
            "registered with DockMon (host %s)%s",  # agent_id is the token: never logged
            msg.host_id,
            f"; delivering {len(queued)} queued messages" if queued else "",
        )
        now = self.ctx.clock.monotonic()
        self._last_heard = self._last_ping = now
        assert self._link is not None
        for text in queued:
            self._transmit(text)
        if self._delivery.doubtful:  # live events wait in the streamer's cursor meanwhile
            self._delivery.awaiting_replay = True
            self.tell_self_later(self._settings.confirm_margin, ReplayDue(generation=self._attempt))
        else:
            self._ask_replay()
        self._schedule_tick()
        self._notify_link(True)

    def _ask_replay(self) -> None:
        self._delivery.doubtful = False
        self._delivery.awaiting_replay = self.ctx.peers.tell(
            Role.EVENT_STREAMER, ReplayEvents(), optional=True
        )

    def _persist(self, token: Secret) -> None:
        """Save before going on: a crash right after auth must not lose the new identity."""
        try:
            self.ctx.peers.ask(Role.TOKEN_STORE, SaveToken(token=token), timeout=10)
        except TransientError as exc:
            raise FatalError(f"could not persist the permanent token: {exc}") from exc
        self._token = TokenInfo(token=token, kind="permanent", source="auth_success")

    def _auth_rejected(self, error: str) -> None:
        hint = ""
        if (
            self._token is not None
            and self._token.kind == "permanent"
            and ("Invalid registration token" in error or "does not match engine_id" in error)
        ):
            hint = (
                f" — the permanent token from {self._token.source} is no longer accepted (was the "
                "host deleted in DockMon, or Docker reinstalled?). To register again, delete the "
                "token file and set a new REGISTRATION_TOKEN"
            )
        elif "expired" in error or "maximum uses" in error:
            hint = " — generate a new registration token in DockMon and set REGISTRATION_TOKEN"
        self._attempt_failed(f"DockMon rejected the registration: {error}{hint}", level="error")

    def _attempt_failed(self, reason: str, *, level: str = "warning") -> None:
        self._drop_link(reason)
        delay = self._backoff.next_delay()
        self.stats.last_error = reason
        skipped = self._failure_log.check(reason, self.ctx.clock.monotonic())
        if skipped is None:  # the same failure again: logged once, then at a backoff
            log.debug("connection attempt failed: %s; retrying in %.1fs", reason, delay)
        else:
            more = f" ({skipped} more identical failures were not logged)" if skipped else ""
            getattr(log, level)(
                "connection attempt failed: %s; retrying in %.1fs%s", reason, delay, more
            )
        self._state = LinkState.WAITING
        self._report_status()
        self.tell_self_later(delay, Dial())

    # --- self-update hand-over (PROTOCOL §7, §2.5) ------------------------------------------

    def _handing_over(self) -> bool:
        return self._state is LinkState.HANDING_OVER

    def _hand_over(self) -> None:
        """Flush, close and idle: the new agent registers with our token meanwhile."""
        if self._state.idle:
            return
        log.info("handing the DockMon connection over to the new agent; idle until resumed")
        if self._state is LinkState.CONNECTED and self._link is not None:
            self._state = LinkState.HANDING_OVER
            if self._tick_timer is not None:
                self._tick_timer.cancel()
                self._tick_timer = None
            self._link.finish()  # after the frames already queued (the progress events)
            self._arm_attempt_timer(self._settings.write_deadline, LinkState.HANDING_OVER)
            self._notify_link(False)
        else:
            self._drop_link("handed over")
            self._state = LinkState.HANDED_OVER

    def _reader_stopped(self, stopped: ReaderStopped) -> None:
        # the link's end is the last we hear of it: what was ponged less than the margin
        # before it goes again (a close discards what the backend's handler had not read)
        self._last_heard = self.ctx.clock.monotonic() if stopped.at is None else stopped.at
        if self._handing_over():
            self._handed_over(stopped.reason, echoed=stopped.echoed)
        else:
            self._link_lost(stopped.reason)

    def _handed_over(self, how: str, *, echoed: bool) -> None:
        if echoed:  # the backend read everything we sent before our close frame
            self._confirmed(self._delivery.confirm_all())
        self._drop_link(how)
        self._state = LinkState.HANDED_OVER
        log.info("connection handed over (%s)", how)

    def _resume_after_hand_over(self) -> None:
        if not self._state.hands_over:
            return
        log.info("the hand-over was abandoned; reconnecting to DockMon")
        self._drop_link("resuming")
        self._state = LinkState.WAITING
        self._backoff.reset()
        self.actor_ref.tell(Dial())

    def _link_lost(self, reason: str) -> None:
        if self._state is not LinkState.CONNECTED:
            self._attempt_failed(reason)
            return
        log.warning("connection to DockMon lost: %s; reconnecting", reason)
        self._drop_link(reason)
        self._state = LinkState.WAITING
        self.stats.last_error = reason
        self._notify_link(False)
        self.actor_ref.tell(Dial())  # first retry after a drop is immediate (PROTOCOL §9)

    def _drop_link(self, reason: str) -> None:
        self._cancel_attempt_timer()
        if self._tick_timer is not None:
            self._tick_timer.cancel()
            self._tick_timer = None
        link, self._link = self._link, None
        if link is None:
            return
        link.close()
        # what the link outlived by the margin is confirmed; what was ponged later goes again
        self._confirmed(self._delivery.alive_at(self._last_heard))
        self._flush_confirmed()  # before the next link's ReplayEvents: nothing confirmed is resent
        if unconfirmed := self._delivery.link_lost():
            log.info(
                "%d sent messages were not confirmed (no pong, or the link ended less than %gs "
                "after it); they go again on the next connection",
                unconfirmed,
                self._delivery.margin,
            )
        self._attempt += 1  # anything still in flight from that link is now stale
        log.debug("link closed: %s", reason)

    # --- keepalive ----------------------------------------------------------------------------

    def _schedule_tick(self) -> None:
        self._tick_timer = self.tell_self_later(1.0, Tick(generation=self._attempt))

    def _tick(self) -> None:
        if self._state is not LinkState.CONNECTED or self._link is None:
            self._flush_confirmed()
            return
        now = self.ctx.clock.monotonic()
        ended = self._link.ended_at  # its ReaderStopped may still be on the way
        self._confirmed(self._delivery.alive_at(now if ended is None else ended))
        self._flush_confirmed()
        silent = now - self._last_heard
        stuck = self._link.send_stuck_for(now)
        if silent >= self._settings.dead_after:
            self._link_lost(f"no frame or pong for {silent:.0f}s")
            return
        if stuck >= self._settings.write_deadline:
            self._link_lost(f"a send has been blocked for {stuck:.0f}s")
            return
        if now - self._last_ping >= self._settings.ping_interval:
            self._last_ping = now
            self._link.ping(self._delivery.last_seq)
        self._schedule_tick()

    def _arm_attempt_timer(self, delay: float, phase: LinkState) -> None:
        self._cancel_attempt_timer()
        self._attempt_timer = self.tell_self_later(
            delay, AttemptTimedOut(generation=self._attempt, phase=phase)
        )

    def _cancel_attempt_timer(self) -> None:
        if self._attempt_timer is not None:
            self._attempt_timer.cancel()
            self._attempt_timer = None

    # --- outbound -----------------------------------------------------------------------------

    def _connected(self) -> bool:
        return self._state is LinkState.CONNECTED and self._link is not None

    def _transmit(self, text: str, *, event_seq: int = 0, receipt: Receipt | None = None) -> None:
        """Send a frame that must not be lost and ask the server to confirm it with a pong.

        WebSocket frames are read in order, so the pong to a ping sent after frame N proves the
        backend's WebSocket layer read frames up to N; once the link has outlived that pong by
        the confirmation margin, its handler did too (:mod:`actors.session.delivery`).
        Unconfirmed frames go again if the link dies: at-least-once delivery. The ping follows
        the burst a frame belongs to at once (one ping per burst, not per frame: issue 13).
        While the writer is idle the link writes frame and ping from this thread, without
        blocking (``send_direct``).
        """
        assert self._link is not None
        ack = self._delivery.sent(text, event_seq=event_seq, receipt=receipt)
        self._link.send_direct(text, ack)  # no hand-off to the writer while it is idle

    def _send_event(self, event: ContainerEventObserved) -> None:
        """Events live in the EventStreamer's cursor until confirmed: never in our outbox.

        While disconnected they are skipped; after registering, the streamer replays every
        unconfirmed one in order (ReplayEvents), so none is lost even if this actor restarts.
        """
        if not self._connected() or not self._delivery.claim_event(event.seq, event.floor):
            return
        text = encode_container_event(event, self.ctx.clock.time_ns())
        self._transmit(text, event_seq=event.seq)

    def _send_tracked(self, msg: TrackedEventOut) -> None:
        """Like an event: sent once per link while connected, confirmed to its owner by pong."""
        receipt = (msg.owner, msg.key)
        if not self._connected() or not self._delivery.claim_tracked(receipt):
            return
        text = encode_event(msg.command, msg.payload, self.ctx.clock.time_ns())
        self._transmit(text, receipt=receipt)

    def _confirmed(self, confirmed: Confirmed) -> None:
        """Tell the owners of the events a pong confirmed.

        Container events are told to the EventStreamer in batches (issue 13: not one message
        per pong): at the next tick, beyond CONFIRM_BATCH, and whenever the link goes, so the
        confirmation always precedes the ReplayEvents of the next link (one inbox, FIFO).
        """
        for owner, key in confirmed.receipts:
            self.ctx.peers.tell(owner, EventDelivered(key=key), optional=True)
        self._events_confirmed += confirmed.events
        if len(self._events_confirmed) >= CONFIRM_BATCH:
            self._flush_confirmed()

    def _flush_confirmed(self) -> None:
        if self._events_confirmed:
            seqs, self._events_confirmed = tuple(self._events_confirmed), []
            self.ctx.peers.tell(Role.EVENT_STREAMER, EventsConfirmed(seqs=seqs), optional=True)

    def _bounded_reply(self, reply: Reply) -> tuple[str, AuditLine | None]:
        """The reply's frame, or an error in its place if the backend could not read it: a
        frame over 16 MiB closes the connection (1009), and resending it would do so forever;
        and the request's audit line, for the caller to write once the frame is sent."""
        text = encode_reply(reply, self.ctx.clock.time_ns())
        size = frame_bytes(text)
        if size > MAX_MESSAGE_BYTES:
            error = (
                f"response too large: {size} bytes, the server accepts at most 16 MiB per "
                "message (PROTOCOL §1.3); ask for less (e.g. a smaller log tail)"
            )
            log.error("reply to %s not sent: %s", reply.request_id, error)
            reply = (
                ContainerOpFailed(request_id=reply.request_id, error=error)
                if isinstance(reply, ContainerOpSucceeded | ContainerOpFailed)
                else CommandFailed(request_id=reply.request_id, error=error)
            )
            text = encode_reply(reply, self.ctx.clock.time_ns())
        return text, self._book.answered(reply)

    def _send(self, text: str, *, buffer: bool = True) -> None:
        if frame_bytes(text) > MAX_MESSAGE_BYTES:  # an event: the backend could never read it
            log.error(
                "dropped an outgoing message of %d bytes: over the 16 MiB the server accepts",
                frame_bytes(text),
            )
            return
        if self._state is LinkState.CONNECTED and self._link is not None:
            if buffer:
                self._transmit(text)
            else:
                self._link.send(text)
            return
        if not buffer:
            return  # stats and the like are worthless later (PROTOCOL §5.2)
        self._delivery.queue(text)
        if self.ctx.clock.monotonic() - self._status_reported >= 1.0:
            self._report_status()


def _described(request: Request) -> str:
    """The request's operation and target, for a log line."""
    return request.operation + (f" on {request.target}" if request.target else "")
