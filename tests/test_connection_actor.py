"""Connection actor with a FakeLink and a manual clock: registration, backoff, keepalive, outbox."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pykka
import pytest

from actors.base import Peers
from actors.connection import ConnectionActor
from actors.link.websocket import LinkSettings
from actors.rules.policy import AuditLog
from actors.runtime.backoff import Backoff
from agent_cli import fanouts
from messages.common import Ping, RawJson, Secret
from messages.connection import Dial, FrameReceived, LinkOpened, PongReceived, ReaderStopped
from messages.docker import (
    CommandSucceeded,
    ContainerEventObserved,
    ContainerOpSucceeded,
    DescribeHost,
    EventsConfirmed,
    EventsReplay,
    HostDescribed,
    HostInfo,
    ReplayEvents,
    StartContainer,
    StopContainer,
)
from messages.images import ListImages
from messages.outbound import (
    AuditRecord,
    EventDelivered,
    EventOut,
    LinkStateChanged,
    TrackedEventOut,
)
from messages.roles import Role
from messages.status import ConnectionStatus
from messages.tokens import GetToken, SaveToken, TokenInfo
from messages.wire import AgentIdentity
from tests.support.fakes import FakeClock, FakeLink, FakeScheduler, ProbeHandle, make_ctx

IDENT = AgentIdentity(
    version="0.1.0",
    proto_version="1.1",
    capabilities=(("container_operations", True),),
    agent_name=None,
    force_unique_registration=False,
    os_hostname="h",
    agent_os="linux",
    agent_arch="amd64",
)
HOST = HostInfo(engine_id="ENGINE:ID", daemon_name="d", docker_version="20.10")
AUTH_OK = '{"type":"auth_success","agent_id":"A1","host_id":"H1","permanent_token":"A1"}'


@dataclass
class Rig:
    ref: pykka.ActorRef[Any]
    clock: FakeClock
    scheduler: FakeScheduler
    gateway: ProbeHandle
    tokens: ProbeHandle
    peers: Peers
    streamer: ProbeHandle

    @property
    def state(self) -> str:
        return str(self.ref.proxy().state.get(timeout=3))

    @property
    def dropped(self) -> int:
        return int(self.ref.proxy().outbox_dropped.get(timeout=3))

    def barrier(self) -> None:
        self.ref.ask(Ping(), timeout=3)

    def link(self) -> FakeLink:
        self.barrier()
        return FakeLink.instances[-1]

    def describe(self) -> FakeLink:
        ask = self.gateway.expect(DescribeHost)
        self.ref.tell(HostDescribed(attempt=ask.attempt, info=HOST))
        return self.link()

    def connect(self) -> FakeLink:
        link = self.describe()
        self.ref.tell(LinkOpened(generation=link.generation))
        self.ref.tell(FrameReceived(generation=link.generation, data=AUTH_OK))
        self.barrier()
        assert self.state == "connected"
        return link

    def pong(self, link: FakeLink, ack: int) -> None:
        """A pong the link's reader read now."""
        self.ref.tell(PongReceived(generation=link.generation, ack=ack, at=self.clock.now))

    def end(self, link: FakeLink, reason: str, after: float = 0.0) -> None:
        """The link's reader met its end ``after`` seconds from now."""
        at = self.clock.now + after
        self.ref.tell(ReaderStopped(generation=link.generation, reason=reason, at=at))

    def advance(self, seconds: float, step: float = 1.0) -> None:
        for _ in range(round(seconds / step)):
            self.scheduler.advance(step)
            self.barrier()


@pytest.fixture
def rig() -> Iterator[Rig]:
    FakeLink.instances.clear()
    clock = FakeClock()
    scheduler = FakeScheduler(clock)
    peers = Peers()
    tokens = ProbeHandle(
        lambda m: (
            TokenInfo(token=Secret("reg-token"), kind="registration", source="env")
            if isinstance(m, GetToken)
            else None
        )
    )
    gateway = ProbeHandle()
    streamer = ProbeHandle()
    peers.set(Role.EVENT_STREAMER, streamer.ref)
    peers.set(Role.TOKEN_STORE, tokens.ref)
    peers.set(Role.DOCKER_GATEWAY, gateway.ref)
    ref = ConnectionActor.start(
        make_ctx(peers, scheduler, clock, child_id="connection"),
        settings=LinkSettings(url="ws://127.0.0.1:9/api/agent/ws", outbox_limit=5),
        identity=IDENT,
        reconnect_initial=1.0,
        reconnect_max=8.0,
        link_subscribers=fanouts().link,
        link_factory=FakeLink,  # type: ignore[arg-type]
        rng=random.Random(7),
    )
    peers.set(Role.CONNECTION, ref)
    yield Rig(ref, clock, scheduler, gateway, tokens, peers, streamer)
    pykka.ActorRegistry.stop_all()


def note(n: int) -> EventOut:
    """A buffered event that is not a container event (progress and the like)."""
    return EventOut(command="update_progress", payload=RawJson.of({"message": f"c{n}"}))


def name_of(frame: str) -> str:
    payload = json.loads(frame)["payload"]
    return str(payload.get("container_name") or payload.get("message"))


def event(n: int) -> ContainerEventObserved:
    return ContainerEventObserved(
        seq=n + 1,
        container_id=f"{n:064x}",
        container_name=f"c{n}",
        image="img",
        action="start",
        time=1_750_000_000 + n,
        time_nano=(1_750_000_000 + n) * 10**9,
        attributes=(("name", f"c{n}"),),
    )


def test_registers_with_the_token_and_persists_the_permanent_one(rig: Rig) -> None:
    link = rig.describe()
    frame = json.loads(link.register_frame)
    assert frame["type"] == "register" and frame["token"] == "reg-token"
    assert frame["engine_id"] == "ENGINE:ID"
    rig.ref.tell(LinkOpened(generation=link.generation))
    rig.ref.tell(FrameReceived(generation=link.generation, data=AUTH_OK))
    saved = rig.tokens.expect(SaveToken)
    assert saved.token == Secret("A1")
    assert rig.state == "connected"


def test_auth_error_backs_off_with_full_jitter_up_to_the_cap(rig: Rig) -> None:
    caps: list[float] = []
    for _ in range(6):
        link = rig.describe()
        rig.ref.tell(LinkOpened(generation=link.generation))
        rig.ref.tell(
            FrameReceived(generation=link.generation, data='{"type":"auth_error","error":"no"}')
        )
        rig.barrier()
        assert link.closed and rig.state == "waiting"
        (timer,) = rig.scheduler.pending(Dial)
        delay = timer.due - rig.clock.now
        caps.append(min(8.0, 2 ** len(caps)))
        assert 0 <= delay <= caps[-1]
        rig.scheduler.advance(delay)
    assert caps == [1, 2, 4, 8, 8, 8]


def test_backoff_full_jitter_statistics() -> None:
    b = Backoff(1.0, 60.0, random.Random(3))
    delays = [b.next_delay() for _ in range(12)]
    assert all(0 <= d <= min(60, 2**i) for i, d in enumerate(delays))
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered, not fixed
    b.reset()
    assert b.cap() == 1.0


def test_messages_are_buffered_while_disconnected_and_delivered_in_order(rig: Rig) -> None:
    for n in range(3):
        rig.ref.tell(note(n))
    rig.ref.tell(CommandSucceeded(request_id="r", payload=RawJson("[]")))
    link = rig.connect()
    assert [name_of(s) for s in link.sent[:3]] == ["c0", "c1", "c2"]
    assert json.loads(link.sent[3])["type"] == "response"
    rig.ref.tell(note(9))
    rig.barrier()
    assert name_of(link.sent[-1]) == "c9"


def test_outbox_is_bounded_and_counts_what_it_drops(rig: Rig) -> None:
    for n in range(8):
        rig.ref.tell(note(n))
    link = rig.connect()
    assert [name_of(s) for s in link.sent] == ["c3", "c4", "c5", "c6", "c7"]
    assert rig.dropped == 3


def test_container_events_come_from_the_streamer_replay_in_order(rig: Rig) -> None:
    rig.ref.tell(event(0))  # disconnected: not buffered here, the streamer keeps it
    link = rig.connect()
    rig.streamer.expect(ReplayEvents)
    rig.ref.tell(event(5))  # live, but the replay has not arrived yet: it will contain it
    rig.ref.tell(EventsReplay(events=(event(0), event(1), event(5))))
    rig.ref.tell(event(1))  # already sent: not again
    rig.ref.tell(event(6))
    rig.barrier()
    assert [name_of(s) for s in link.sent] == ["c0", "c1", "c5", "c6"]
    rig.pong(link, 4)
    rig.advance(1)  # the link outlived the pong by the margin: at the next tick, in a batch
    confirmed = rig.streamer.expect(EventsConfirmed)
    assert confirmed.seqs == (1, 2, 6, 7)


def test_pongs_confirm_in_one_batch_told_before_the_next_links_replay(rig: Rig) -> None:
    link = rig.connect()
    rig.streamer.expect(ReplayEvents)
    rig.ref.tell(EventsReplay(events=()))
    for n in range(3):
        rig.ref.tell(event(n))
        rig.pong(link, n + 1)  # a pong per event
    rig.end(link, "dropped", after=1.0)  # the link outlived the pongs by the margin
    rig.connect()
    rig.streamer.ref.ask(Ping(), timeout=3)  # the probe's inbox is FIFO: everything is in
    told = [m for m in rig.streamer.received if isinstance(m, EventsConfirmed | ReplayEvents)]
    # one message for the three pongs, and it precedes the replay request of the new link
    assert [type(m) for m in told] == [EventsConfirmed, ReplayEvents]
    assert told[0].seqs == (1, 2, 3)  # type: ignore[union-attr]


def test_unconfirmed_events_are_not_requeued_here_but_replayed(rig: Rig) -> None:
    link = rig.connect()
    rig.streamer.expect(ReplayEvents)
    rig.ref.tell(EventsReplay(events=(event(0),)))
    rig.ref.tell(ReaderStopped(generation=link.generation, reason="dead"))
    again = rig.connect()
    assert again.sent == []  # nothing from our own outbox ...
    rig.streamer.expect(ReplayEvents)  # ... the streamer is asked for it instead
    rig.ref.tell(EventsReplay(events=(event(0),)))
    rig.barrier()
    assert [name_of(s) for s in again.sent] == ["c0"]


def test_after_a_link_ended_in_doubt_the_replay_waits_until_the_new_one_lived_the_margin(
    rig: Rig,
) -> None:
    """In a storm of drops every 200 ms, replaying at once would resend every doubtful event
    on every link: the replay (and the live events behind it) waits the margin instead, and a
    link that dies younger asks for nothing."""
    link = rig.connect()
    rig.streamer.expect(ReplayEvents)
    rig.ref.tell(EventsReplay(events=()))
    rig.ref.tell(event(0))
    rig.pong(link, 1)
    rig.end(link, "closed by server: 1001 going away", after=0.2)  # event 0 is in doubt
    for young in (True, False):
        again = rig.connect()
        rig.ref.tell(event(1))  # live: it waits with the replay (the streamer holds it)
        rig.barrier()
        assert again.sent == []
        assert not [m for m in rig.streamer.received if isinstance(m, ReplayEvents)]
        if young:  # dies before the margin: nothing sent, and the doubt stays
            rig.end(again, "closed by server: 1001 going away")
    rig.advance(1)
    rig.streamer.expect(ReplayEvents)  # the link lived 1 s: now
    rig.ref.tell(EventsReplay(events=(event(0), event(1))))
    rig.barrier()
    assert [name_of(s) for s in again.sent] == ["c0", "c1"]


def test_a_dropped_connection_reconnects_at_once(rig: Rig) -> None:
    link = rig.connect()
    rig.ref.tell(ReaderStopped(generation=link.generation, reason="closed by server: 1000"))
    rig.barrier()
    assert link.closed
    rig.gateway.expect(DescribeHost)  # a new attempt without waiting for a timer
    assert not rig.scheduler.pending(Dial)


def test_keepalive_pings_every_30s_and_declares_silence_dead_after_40s(rig: Rig) -> None:
    link = rig.connect()
    rig.advance(30)
    assert link.pings == 1
    for _ in range(4):  # pongs keep it alive well past 40 s
        rig.ref.tell(PongReceived(generation=link.generation))
        rig.advance(15)
    assert rig.state == "connected" and not link.closed
    rig.advance(40)
    assert link.closed
    rig.gateway.expect(DescribeHost)


def test_a_stuck_send_is_a_dead_link(rig: Rig) -> None:
    link = rig.connect()
    link.stuck_since = rig.clock.now
    rig.advance(10)
    assert link.closed


def test_frames_from_an_old_link_are_ignored(rig: Rig) -> None:
    old = rig.connect()
    rig.ref.tell(ReaderStopped(generation=old.generation, reason="x"))
    new = rig.describe()
    rig.ref.tell(FrameReceived(generation=old.generation, data=AUTH_OK))
    rig.barrier()
    assert rig.state == "dialing" and new.generation != old.generation


def test_commands_are_routed_and_a_dead_peer_gets_an_in_band_error(rig: Rig) -> None:
    link = rig.connect()
    frame = {
        "type": "container_operation",
        "id": "q1",
        "correlation_id": "q1",
        "payload": {"action": "start", "container_id": "abc"},
    }
    rig.ref.tell(FrameReceived(generation=link.generation, data=json.dumps(frame)))
    assert rig.gateway.expect(StartContainer) == StartContainer(request_id="q1", container_id="abc")
    rig.peers.remove(Role.DOCKER_GATEWAY)
    again = {**frame, "id": "q2", "correlation_id": "q2"}  # (q1 is still pending)
    rig.ref.tell(FrameReceived(generation=link.generation, data=json.dumps(again)))
    rig.barrier()
    reply = json.loads(link.sent[-1])
    assert reply == {
        "correlation_id": "q2",
        "success": False,
        "error": "docker_gateway is restarting; try again",
    }


def _audited_rig(rig: Rig, path: Any) -> tuple[pykka.ActorRef[Any], AuditLog]:
    """A second Connection on the rig's peers, with an audit log at ``path``."""
    audit = AuditLog(path, who="dockmon@test")
    ref = ConnectionActor.start(
        make_ctx(rig.peers, rig.scheduler, rig.clock, child_id="connection"),
        settings=LinkSettings(url="ws://127.0.0.1:9/api/agent/ws"),
        identity=IDENT,
        reconnect_initial=1.0,
        reconnect_max=8.0,
        link_subscribers=fanouts().link,
        link_factory=FakeLink,  # type: ignore[arg-type]
        audit=audit,
    )
    return ref, audit


def test_a_duplicate_of_a_pending_request_id_is_refused_and_audited(
    rig: Rig, tmp_path: Any
) -> None:
    rig.barrier()  # its Dial (told in on_start) runs before the stop, never after
    rig.ref.stop()  # it asked for the host description before stopping: take that ask away
    rig.gateway.expect(DescribeHost)
    ref, _ = _audited_rig(rig, tmp_path / "audit.log")
    rig.ref = ref
    link = rig.connect()
    op = {"type": "container_operation", "id": "q1", "correlation_id": "q1",
          "payload": {"action": "stop", "container_id": "web"}}  # fmt: skip
    command = {"type": "command", "command": "list_images", "id": "c1", "correlation_id": "c1",
               "payload": {}}  # fmt: skip
    for frame in (op, command, op, command):
        rig.ref.tell(FrameReceived(generation=link.generation, data=json.dumps(frame)))
    rig.barrier()
    assert rig.gateway.expect(StopContainer).request_id == "q1"
    assert rig.gateway.expect(ListImages).request_id == "c1"
    assert [m for m in rig.gateway.received if not isinstance(m, DescribeHost)] == []  # ran once
    replies = [json.loads(text) for text in link.sent[-2:]]
    assert replies[0] == {
        "correlation_id": "q1",
        "success": False,
        "error": "duplicate request id q1: a stop request with this id is still pending",
    }
    assert replies[1]["id"] == "c1" and replies[1]["error"] == (
        "duplicate request id c1: a list_images request with this id is still pending"
    )
    rig.ref.tell(ContainerOpSucceeded(request_id="q1", body=RawJson('{"container_id":"web"}')))
    rig.ref.tell(CommandSucceeded(request_id="c1", payload=RawJson("[]")))
    rig.barrier()
    lines = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    assert [(x["operation"], x["result"].split(":")[0]) for x in lines] == [
        ("stop", "rejected"),
        ("list_images", "rejected"),
        ("stop", "ok"),
        ("list_images", "ok"),
    ]
    assert "duplicate request id q1" in lines[0]["result"] and lines[0]["target"] == "web"
    # answered: the id is free again
    rig.ref.tell(FrameReceived(generation=link.generation, data=json.dumps(op)))
    assert rig.gateway.expect(StopContainer).request_id == "q1"


@pytest.mark.parametrize(
    "data",
    ["{oops", "[]", "null", b"\x00binary", '{"type":"nope"}', '{"type":"shell_session"}'],
)
def test_malformed_frames_are_ignored_and_the_link_survives(rig: Rig, data: str | bytes) -> None:
    link = rig.connect()
    rig.ref.tell(FrameReceived(generation=link.generation, data=data))
    rig.barrier()
    assert rig.state == "connected" and not link.closed and link.sent == []


def test_unknown_command_gets_the_go_error_text(rig: Rig) -> None:
    link = rig.connect()
    frame = {"type": "command", "command": "fly", "id": "u1", "correlation_id": "u1"}
    rig.ref.tell(FrameReceived(generation=link.generation, data=json.dumps(frame)))
    rig.barrier()
    reply = json.loads(link.sent[-1])
    assert (reply["type"], reply["id"], reply["error"]) == (
        "response",
        "u1",
        "unknown command: fly",
    )


def test_missing_host_facts_time_out_into_backoff(rig: Rig) -> None:
    rig.gateway.expect(DescribeHost)
    rig.advance(15)
    assert rig.state == "waiting" and rig.scheduler.pending(Dial)


def test_frames_not_confirmed_by_a_pong_are_resent_in_order_after_a_drop(rig: Rig) -> None:
    link = rig.connect()
    for n in range(3):
        rig.ref.tell(note(n))
    rig.barrier()
    assert link.acks == [1, 2, 3]  # each frame numbered, for the link's burst ping
    rig.pong(link, 1)  # pongs 2 and 3 never come
    rig.end(link, "silently dead", after=1.0)
    again = rig.connect()
    assert [name_of(s) for s in again.sent] == [
        "c1",
        "c2",
    ]  # c0 was confirmed; c1 and c2 come again, in order


def test_confirmed_frames_are_not_resent(rig: Rig) -> None:
    link = rig.connect()
    for n in range(3):
        rig.ref.tell(note(n))
    rig.pong(link, 3)
    rig.barrier()
    rig.end(link, "closed by server: 1000", after=1.0)
    assert rig.connect().sent == []


def test_frames_ponged_less_than_the_margin_before_the_link_ends_go_again(rig: Rig) -> None:
    """The backend's WebSocket layer pongs before its handler reads what came before the ping,
    and a close discards what the handler had not read: a pong must be outlived to count."""
    link = rig.connect()
    rig.streamer.expect(ReplayEvents)
    rig.ref.tell(EventsReplay(events=()))
    rig.ref.tell(note(0))
    rig.ref.tell(event(1))
    rig.pong(link, 2)
    rig.end(link, "closed by server: 1001 going away", after=0.5)  # within the 1 s margin
    again = rig.connect()
    assert [name_of(s) for s in again.sent] == ["c0"]  # the plain frame, again
    rig.streamer.ref.ask(Ping(), timeout=3)
    assert not [m for m in rig.streamer.received if isinstance(m, EventsConfirmed)]
    rig.advance(1)  # the replay waits until the new link lived the margin (below)
    rig.streamer.expect(ReplayEvents)  # the event: from the streamer, which still holds it


def test_stats_are_never_resent(rig: Rig) -> None:
    link = rig.connect()
    rig.ref.tell(EventOut(command="container_stats", payload=RawJson("{}"), buffer=False))
    rig.barrier()
    assert len(link.sent) == 1 and link.acks == []
    rig.ref.tell(ReaderStopped(generation=link.generation, reason="x"))
    assert rig.connect().sent == []


def test_a_drop_is_reported_to_the_status_file_as_disconnected(rig: Rig) -> None:
    status = ProbeHandle()
    rig.peers.set(Role.STATUS, status.ref)
    link = rig.connect()
    assert status.expect(ConnectionStatus, where=lambda s: s.connected).registrations == 1
    rig.ref.tell(ReaderStopped(generation=link.generation, reason="closed by server: 1001"))
    down = status.expect(ConnectionStatus, where=lambda s: not s.connected)
    assert down.last_error == "closed by server: 1001"


def test_a_reply_the_backend_could_not_read_is_replaced_by_an_error(rig: Rig) -> None:
    """Over 16 MiB the backend closes with 1009; resending the frame would loop forever."""
    link = rig.connect()
    big = RawJson.of({"logs": "é" * (9 * 1024 * 1024)})  # 9 Mi characters, 18 MiB of UTF-8
    rig.ref.tell(CommandSucceeded(request_id="r-big", payload=big))
    rig.ref.tell(EventOut(command="update_progress", payload=big))
    rig.ref.tell(CommandSucceeded(request_id="r-ok", payload=RawJson.of({"fine": True})))
    rig.barrier()
    sent = [json.loads(frame) for frame in link.sent]
    assert [f.get("id") for f in sent] == ["r-big", "r-ok"]  # the big event was dropped
    assert sent[0]["error"].startswith("response too large: ")
    assert "16 MiB" in sent[0]["error"]
    assert all(len(frame.encode()) < 1024 for frame in link.sent)


def tracked(key: str) -> TrackedEventOut:
    payload = RawJson.of({"deployment_id": key, "action": "up", "success": True})
    return TrackedEventOut(command="deploy_complete", payload=payload, owner=Role.DEPLOYER, key=key)


def test_a_tracked_event_goes_once_per_link_and_is_confirmed_to_its_owner(rig: Rig) -> None:
    deployer = ProbeHandle()
    rig.peers.set(Role.DEPLOYER, deployer.ref)
    rig.ref.tell(tracked("d-0"))  # disconnected: dropped here, the owner keeps it
    link = rig.connect()
    assert link.sent == []
    deployer.expect(LinkStateChanged, where=lambda m: m.connected)  # its cue to send again
    rig.ref.tell(tracked("d-0"))
    rig.ref.tell(tracked("d-0"))  # the owner resent it before it heard of the link: once only
    rig.ref.tell(note(1))
    rig.ref.tell(tracked("d-1"))
    rig.barrier()
    frames = [json.loads(s) for s in link.sent]
    assert [(f["command"], f["payload"].get("deployment_id")) for f in frames] == [
        ("deploy_complete", "d-0"),
        ("update_progress", None),
        ("deploy_complete", "d-1"),
    ]
    assert frames[0]["type"] == "event" and "correlation_id" not in frames[0]
    rig.pong(link, link.acks[1])
    rig.advance(1)  # outlived by the margin
    assert deployer.expect(EventDelivered) == EventDelivered(key="d-0")
    # the link dies before d-1 is confirmed: it is not requeued here (the owner sends it)
    rig.ref.tell(ReaderStopped(generation=link.generation, reason="dead"))
    again = rig.connect()
    assert again.sent == []
    rig.ref.tell(tracked("d-1"))
    rig.barrier()
    assert [json.loads(s)["payload"]["deployment_id"] for s in again.sent] == ["d-1"]
    rig.pong(again, again.acks[-1])
    rig.advance(1)
    assert deployer.expect(EventDelivered) == EventDelivered(key="d-1")
    assert not [m for m in deployer.received if isinstance(m, EventDelivered)]


def test_audit_records_from_other_actors_are_written(rig: Rig, tmp_path: Any) -> None:
    from actors.rules.policy import AuditLog

    audit = AuditLog(tmp_path / "audit.log", who="dockmon@test")
    ref = ConnectionActor.start(
        make_ctx(rig.peers, rig.scheduler, rig.clock, child_id="connection2"),
        settings=LinkSettings(url="ws://127.0.0.1:9/api/agent/ws"),
        identity=IDENT,
        reconnect_initial=1.0,
        reconnect_max=8.0,
        link_subscribers=fanouts().link,
        link_factory=FakeLink,  # type: ignore[arg-type]
        audit=audit,
    )
    ref.tell(AuditRecord(operation="deploy_compose", target="site", result="up finished: success"))
    ref.ask(Ping(), timeout=3)
    line = json.loads((tmp_path / "audit.log").read_text())
    assert {k: line[k] for k in ("operation", "target", "result", "who")} == {
        "operation": "deploy_compose",
        "target": "site",
        "result": "up finished: success",
        "who": "dockmon@test",
    }


def test_link_state_changes_go_to_exactly_the_subscribers_the_composition_root_lists(
    rig: Rig,
) -> None:
    subscribers = {role: ProbeHandle() for role in fanouts().link}
    for role, probe in subscribers.items():
        rig.peers.set(role, probe.ref)
    link = rig.connect()
    rig.ref.tell(ReaderStopped(generation=link.generation, reason="dead"))
    rig.barrier()
    for probe in subscribers.values():
        assert probe.expect(LinkStateChanged).connected is True
        assert probe.expect(LinkStateChanged).connected is False
    others = (rig.streamer, rig.gateway, rig.tokens)  # running, but not subscribers
    assert not [m for p in others for m in p.received if isinstance(m, LinkStateChanged)]
