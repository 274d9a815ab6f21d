"""Startup ordering: a reply to what a child sends from ``on_start`` is never a dead letter.

The Connection asks the gateway for the host description from its ``on_start`` (via ``Dial``);
the gateway answers through ``Peers``. The supervisor publishes a child's ref only once its
factory returned, so a gateway fast enough to answer before that found no ``connection`` and
the description was lost until the 15 s describe timeout (issue 9, point 7). These tests force
exactly that interleaving: the Connection's factory does not return before the gateway has
answered.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from actors.base import ActorContext, Peers, SupervisedActor
from actors.connection import ConnectionActor
from actors.link.websocket import LinkSettings
from agent_cli import fanouts
from messages.common import Ping, Secret
from messages.docker import DescribeHost, HostDescribed, HostInfo
from messages.roles import Role
from messages.tokens import GetToken, TokenInfo
from messages.wire import AgentIdentity
from supervisor import ChildSpec, Supervisor
from tests.support.fakes import FakeClock, FakeLink, FakeScheduler

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


@pytest.fixture(autouse=True)
def _no_leftover_actors() -> Iterator[None]:
    FakeLink.instances.clear()
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=5)


class Tokens(SupervisedActor):
    def handle(self, message: Any) -> Any:
        if isinstance(message, GetToken):
            return TokenInfo(token=Secret("reg-token"), kind="registration", source="env")
        return None


class EagerGateway(SupervisedActor):
    """Answers DescribeHost at once, from its own thread, and says when it has."""

    def __init__(self, ctx: ActorContext, answered: threading.Event) -> None:
        super().__init__(ctx)
        self._answered = answered

    def handle(self, message: Any) -> Any:
        if isinstance(message, DescribeHost):
            host = HostInfo(engine_id="ENGINE:ID", daemon_name="d")
            self.ctx.peers.tell(Role.CONNECTION, HostDescribed(attempt=message.attempt, info=host))
            self._answered.set()
        return None


def test_the_host_description_reaches_a_connection_not_yet_published() -> None:
    answered = threading.Event()
    settings = LinkSettings(url="ws://127.0.0.1:9/api/agent/ws", describe_timeout=3600)

    def connection(ctx: ActorContext) -> pykka.ActorRef[Any]:
        ref = ConnectionActor.start(
            ctx,
            settings=settings,
            identity=IDENT,
            reconnect_initial=1.0,
            reconnect_max=8.0,
            link_subscribers=fanouts().link,
            link_factory=FakeLink,  # type: ignore[arg-type]
            rng=random.Random(1),
        )
        # The interleaving under test: the gateway answers before the supervisor has the ref.
        assert answered.wait(10), "the gateway never got DescribeHost"
        return ref

    clock = FakeClock()
    sup = Supervisor(
        [
            ChildSpec(Role.TOKEN_STORE, lambda ctx: Tokens.start(ctx)),
            ChildSpec(Role.DOCKER_GATEWAY, lambda ctx: EagerGateway.start(ctx, answered)),
            ChildSpec(Role.CONNECTION, connection),
        ],
        scheduler=FakeScheduler(clock),  # no timer ever fires: no describe timeout to rescue it
        clock=clock,
    ).start()
    try:
        assert sup.ref is not None
        sup.ref.ask(Ping(), timeout=10)  # answered after its on_start started every child
        ref = sup.peers.get(Role.CONNECTION)
        assert ref is not None
        ref.ask(Ping(), timeout=5)  # a barrier: the held HostDescribed is in its inbox before
        assert FakeLink.instances, "the Connection never dialled: HostDescribed was lost"
        assert FakeLink.instances[0].register_frame  # it dialled with a register frame
        assert ref.proxy().state.get(timeout=5) == "dialing"
    finally:
        sup.stop()


def test_peers_hold_messages_for_a_starting_role_and_deliver_them_in_order() -> None:
    received: list[int] = []

    class Sink(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> Any:
            if isinstance(message, int):
                received.append(message)
            return None

    peers = Peers()
    peers.reserve(Role.STATUS)
    assert peers.tell(Role.STATUS, 1) is True
    assert peers.tell(Role.STATUS, 2) is True
    ref = Sink.start()
    peers.set(Role.STATUS, ref)
    assert peers.tell(Role.STATUS, 3) is True
    ref.ask(Ping(), timeout=5)
    assert received == [1, 2, 3]


def test_a_cancelled_reservation_drops_what_it_held_as_dead_letters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    peers = Peers()
    peers.reserve(Role.STATUS)
    assert peers.tell(Role.STATUS, Ping()) is True
    peers.remove(Role.STATUS)
    assert "dead letter: Ping for status (it failed to start)" in caplog.text
    assert peers.tell(Role.STATUS, Ping()) is False
