"""A month of uptime in seconds: every actor that schedules timers, on a fake clock.

:class:`MonthRig` runs the real supervisor and the real Connection, StatusReporter,
DockerGateway, EventStreamer, Stats, HealthChecks and TokenStore actors, with fakes only at their
I/O seams (the WebSocket link, the Docker clients, the stats streams, the HTTP checker), all on one
:class:`FakeClock` / :class:`FakeScheduler`. :meth:`MonthRig.run` drives ordinary traffic through
simulated time in steps (container events, stats samples, health checks, pongs, a reconnect
every hour, Docker away for an hour and an actor crash and restart every day) and samples, once
per simulated day, what must stay flat: pending timers, timers fired (mailbox traffic), the
deepest mailbox seen, and the objects the process retains.

Used by tests/test_soak_month.py (assertions) and bench/hardening.py (figures).
"""

from __future__ import annotations

import contextlib
import gc
import json
import queue
import threading
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pykka
import requests

from actors.base import Peers, SupervisedActor
from actors.connection import ConnectionActor
from actors.docker_gateway import DockerGatewayActor
from actors.event_streamer import EventCursor, EventStreamerActor
from actors.health_checks import HealthCheckActor, HealthCheckMemory
from actors.link.websocket import LinkSettings
from actors.stats import StatsActor, StatsSettings
from actors.status import StatusReporterActor
from actors.token_store import TokenStoreActor
from agent_cli import fanouts
from messages.common import Ping, Secret
from messages.connection import FrameReceived, LinkOpened, PongReceived, ReaderStopped
from messages.docker import HostInfo
from messages.health import CheckOutcome, HealthCheckConfig
from messages.roles import Role
from messages.wire import AgentIdentity
from supervisor import ChildSpec, Supervisor
from tests.support.fakes import FakeClock, FakeLink, FakeScheduler
from tests.support.waiting import wait_for

DAY = 86_400.0
IDENT = AgentIdentity(
    version="0.1.0",
    proto_version="1.1",
    capabilities=(("container_operations", True),),
    agent_name=None,
    force_unique_registration=False,
    os_hostname="soak",
    agent_os="linux",
    agent_arch="amd64",
)
HOST = HostInfo(engine_id="ENGINE:SOAK", daemon_name="soak", docker_version="20.10")
AUTH_OK = '{"type":"auth_success","agent_id":"A1","host_id":"H1","permanent_token":"perm-A1"}'
CONTAINERS = tuple(f"{n:012x}" * 1 + "0" * 52 for n in range(1, 6))


def _health_sync(day: int) -> str:
    """The backend's set of checks; containers are recreated (new ids) every day."""
    configs = [
        {
            "container_id": f"{day:06x}{n:06x}",
            "host_id": "H1",
            "url": f"http://127.0.0.1:9/{n}",
            "check_interval_seconds": 30,
            "timeout_seconds": 5,
        }
        for n in range(len(CONTAINERS))
    ]
    return json.dumps({"type": "health_check_configs_sync", "payload": {"configs": configs}})


class FakeDockerAPI:
    """The DockerGateway's docker-py seam: answers its probe and DescribeHost, or, while the rig
    has Docker down, fails the way a missing socket does (so the probe's failing cadence and its
    rate-limited logging run too)."""

    def __init__(self, rig: MonthRig) -> None:
        self._rig = rig

    def _answer(self) -> None:
        if self._rig.docker_down:
            raise requests.exceptions.ConnectionError(FileNotFoundError(2, "No such file"))

    def ping(self) -> bool:
        self._answer()
        return True

    def info(self) -> dict[str, Any]:
        self._answer()
        return {"ID": HOST.engine_id, "Name": HOST.daemon_name}

    def version(self) -> dict[str, Any]:
        return {"Version": HOST.docker_version}

    def inspect_network(self, _name: str) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


class _EventStream:
    """docker-py's events() generator: yields what the rig feeds until it is closed.

    ``handed`` counts the events the reader came back from: it asks for the next one only after
    it told the streamer about the last, so ``handed == fed`` means all of them were told.
    """

    def __init__(self) -> None:
        self._feed: queue.Queue[Any] = queue.Queue()
        self._cond = threading.Condition()
        self.fed = 0
        self.handed = 0

    def put(self, event: dict[str, Any]) -> None:
        with self._cond:
            self.fed += 1
        self._feed.put(event)

    def __iter__(self) -> Iterator[Any]:
        while (item := self._feed.get()) is not None:
            yield item
            with self._cond:
                self.handed += 1
                self._cond.notify_all()

    def wait_handed(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.handed >= self.fed, timeout)

    def close(self) -> None:
        self._feed.put(None)


class FakeDockerEvents:
    """One per EventStreamer subscription (like a fresh docker.APIClient)."""

    def __init__(self, rig: MonthRig) -> None:
        self._rig = rig

    def events(self, **_kwargs: Any) -> _EventStream:
        stream = _EventStream()
        self._rig.event_feeds.append(stream)
        return stream

    def close(self) -> None:
        pass


class FakeStreams:
    """The StatsStreams seam: the rig answers listings and produces samples."""

    def __init__(
        self,
        docker_host: str,
        *,
        on_sample: Any,
        on_ended: Any,
        on_listed: Any,
        api_version: str | None = None,
        on_samples: Any = None,
        poll_pause: float = 0.0,
    ) -> None:
        self.on_sample, self.on_listed = on_sample, on_listed
        self.opened: dict[str, int] = {}
        self.listings: list[int] = []
        self.lock = threading.Lock()

    def open(self, container_id: str, token: int) -> None:
        with self.lock:
            self.opened[container_id] = token

    def close(self, container_id: str) -> None:
        with self.lock:
            self.opened.pop(container_id, None)

    def park(self) -> None:
        pass

    def list_running(self, request: int) -> None:
        with self.lock:
            self.listings.append(request)

    def stop(self) -> None:
        pass


SAMPLE = {
    "read": "2026-01-01T00:00:00Z",
    "cpu_stats": {"cpu_usage": {"total_usage": 2}, "system_cpu_usage": 20, "online_cpus": 1},
    "precpu_stats": {"cpu_usage": {"total_usage": 1}, "system_cpu_usage": 10},
    "memory_stats": {"usage": 100, "limit": 1000, "stats": {}},
    "networks": {"eth0": {"rx_bytes": 1, "tx_bytes": 1}},
    "blkio_stats": {},
}


def _healthy(_config: HealthCheckConfig) -> CheckOutcome:
    return CheckOutcome(healthy=True, status_code=200, response_time_ms=1)


def _table_entries(obj: Any, depth: int) -> int:
    total = 0
    values = list(vars(obj).values()) if hasattr(obj, "__dict__") else []
    for value in values:
        if isinstance(value, dict | list | set | frozenset | deque | tuple):
            total += len(value)
        elif depth > 0 and type(value).__module__.startswith("actors."):
            total += _table_entries(value, depth - 1)
    return total


@dataclass
class DaySample:
    day: int
    pending: Counter[str]
    fired: Counter[str]
    max_inbox: int
    objects: int
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def pending_total(self) -> int:
        return sum(self.pending.values())


class MonthRig:
    def __init__(self, data_path: Path, *, step: float = 600.0) -> None:
        self.step = step
        self.clock = FakeClock()
        self.scheduler = FakeScheduler(self.clock)
        self.peers = Peers()
        self.event_feeds: list[_EventStream] = []
        self.streams: list[FakeStreams] = []
        self._answered: set[int] = set()
        self._event_n = 0
        self.docker_down = False  # one hour a day the daemon is away (the socket is missing)
        self._data = str(data_path)
        self.cursor = EventCursor(self.clock.time_ns(), memory=128)  # full on day 1
        self.memory = HealthCheckMemory()
        self._started = self.clock.now
        FakeLink.instances.clear()
        self.supervisor = Supervisor(
            self._specs(),
            peers=self.peers,
            scheduler=self.scheduler,
            clock=self.clock,
            restart_delay=(0.05, 0.5),
        )

    def _specs(self) -> list[ChildSpec]:
        def streams(*args: Any, **kwargs: Any) -> FakeStreams:
            self.streams.append(FakeStreams(*args, **kwargs))
            del self.streams[:-1]
            return self.streams[-1]

        def ctx_start(cls: Any, **kwargs: Any) -> Any:
            return lambda ctx: cls.start(ctx, **kwargs)

        return [
            ChildSpec(
                Role.TOKEN_STORE,
                ctx_start(
                    TokenStoreActor,
                    data_path=self._data,
                    permanent_token=None,
                    registration_token=Secret("reg-soak-0123456789"),
                ),
            ),
            ChildSpec(
                Role.STATUS, ctx_start(StatusReporterActor, data_path=self._data, version="s")
            ),
            ChildSpec(
                Role.DOCKER_GATEWAY,
                ctx_start(
                    DockerGatewayActor,
                    docker_host="unix:///soak.sock",
                    workers=2,
                    client_factory=lambda: FakeDockerAPI(self),
                    interfaces=lambda: [],
                ),
            ),
            ChildSpec(
                Role.CONNECTION,
                ctx_start(
                    ConnectionActor,
                    settings=LinkSettings(url="ws://127.0.0.1:9/api/agent/ws"),
                    identity=IDENT,
                    reconnect_initial=0.1,
                    reconnect_max=1.0,
                    link_subscribers=fanouts().link,
                    link_factory=FakeLink,
                ),
            ),
            ChildSpec(
                Role.EVENT_STREAMER,
                ctx_start(
                    EventStreamerActor,
                    docker_host="unix:///soak.sock",
                    cursor=self.cursor,
                    forward_to=fanouts().event_forward,
                    event_subscribers=fanouts().events,
                    client_factory=lambda: FakeDockerEvents(self),
                ),
            ),
            ChildSpec(
                Role.STATS,
                ctx_start(
                    StatsActor,
                    settings=StatsSettings(docker_host="unix:///soak.sock", host_roots=None),
                    streams_factory=streams,
                ),
            ),
            ChildSpec(
                Role.HEALTH_CHECKS,
                # two workers: the pool shrinks after 30 s of *real* idle time, which a month
                # simulated in seconds never gives it, so a pool free to grow to each burst's
                # size would show as thread growth that has nothing to do with uptime
                ctx_start(HealthCheckActor, memory=self.memory, checker=_healthy, workers=2),
            ),
        ]

    # --- plumbing -------------------------------------------------------------------------------

    def refs(self) -> list[pykka.ActorRef[Any]]:
        return [r for r in pykka.ActorRegistry.get_all()]

    def barrier(self) -> None:
        """Every actor has handled everything told so far, including what that caused: rounds of
        pings until a whole round finds every mailbox empty (a message chain takes a round per
        hop)."""
        for _ in range(20):
            for ref in self.refs():
                with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                    ref.ask(Ping(), timeout=5)
            if self.inbox_depth() == 0:
                return

    def retained(self) -> int:
        """Entries in every table the live actors (and their helper objects) hold."""
        total = 0
        for ref in self.refs():
            actor = ref._actor_weakref()
            if isinstance(actor, SupervisedActor):
                total += _table_entries(actor, depth=2)
        return total

    def inbox_depth(self) -> int:
        return max((ref.actor_inbox.qsize() for ref in self.refs()), default=0)  # type: ignore[attr-defined]

    def link(self, *, not_: FakeLink | None = None) -> FakeLink:
        """The current link (``not_``: wait for one newer than that)."""
        wait_for(
            lambda: FakeLink.instances and FakeLink.instances[-1] is not not_,
            10,
            "the Connection to dial",
        )
        del FakeLink.instances[:-1]  # the rig keeps only the current link
        return FakeLink.instances[-1]

    def connection(self) -> pykka.ActorRef[Any]:
        ref = self.peers.get(Role.CONNECTION)
        assert ref is not None
        return ref

    def start(self) -> None:
        self.supervisor.start()
        self.barrier()
        self.connect()

    def stop(self) -> None:
        self.supervisor.stop("soak finished")

    def connect(self, previous: FakeLink | None = None) -> None:
        self.barrier()
        link = self.link(not_=previous)
        conn = self.connection()
        conn.tell(LinkOpened(generation=link.generation))
        conn.tell(FrameReceived(generation=link.generation, data=AUTH_OK))
        day = int((self.clock.now - self._started) // DAY)
        conn.tell(FrameReceived(generation=link.generation, data=_health_sync(day)))
        self.barrier()
        assert conn.proxy().state.get(timeout=5) == "connected"

    def reconnect(self) -> None:
        link = self.link()
        self.connection().tell(ReaderStopped(generation=link.generation, reason="server restart"))
        self.barrier()
        self.scheduler.advance(0)
        self.barrier()
        self.connect(previous=link)

    def pong(self) -> None:
        """The backend read everything: answer the newest ping."""
        link = self.link()
        ack = link.acks[-1] if link.acks else None
        link.acks.clear()
        link.sent.clear()
        self.connection().tell(PongReceived(generation=link.generation, ack=ack))

    def container_events(self, count: int) -> None:
        if not self.event_feeds:
            return
        feed = self.event_feeds[-1]
        for _ in range(count):
            self._event_n += 1
            n = self._event_n
            cid = CONTAINERS[n % len(CONTAINERS)]
            action = "start" if n % 2 else "die"
            t = self.clock.time_ns() + n
            feed.put(
                {
                    "Type": "container",
                    "Action": action,
                    "Actor": {"ID": cid, "Attributes": {"name": f"c{n % 5}", "image": "img"}},
                    "time": t // 1_000_000_000,
                    "timeNano": t,
                }
            )
        del self.event_feeds[:-1]

    def stats_traffic(self) -> None:
        if not self.streams:
            return
        streams = self.streams[-1]
        with streams.lock:
            listings = [r for r in streams.listings if r not in self._answered]
            streams.listings.clear()
            opened = dict(streams.opened)
        for request in listings:
            self._answered.add(request)
            streams.on_listed(request, tuple((c, f"c{i}") for i, c in enumerate(CONTAINERS)), "")
        if len(self._answered) > 16:
            self._answered = set(sorted(self._answered)[-8:])
        for cid, token in opened.items():
            streams.on_sample(cid, token, SAMPLE)

    def crash(self, role: Role) -> None:
        ref = self.peers.get(role)
        if ref is not None:
            ref.tell(pykka.messages.ProxyCall(attr_path=("no_such_handler",), args=(), kwargs={}))

    # --- the month ------------------------------------------------------------------------------

    def one_step(self, n: int) -> int:
        """One step of ordinary traffic; returns the deepest mailbox seen meanwhile."""
        self.clock.now += self.step
        self.pong()
        self.container_events(2)
        self.stats_traffic()
        self.barrier()
        self.scheduler.advance(0)  # every timer due in this step fires
        depth = self.inbox_depth()
        self.barrier()
        self.pong()
        per_hour = max(1, round(3600 / self.step))
        # Docker away for most of 05:00-06:00 each day (back for the hourly reconnect at 06:00)
        self.docker_down = (n // per_hour) % 24 == 5 and n % per_hour != 0
        if n % per_hour == 0:
            self.reconnect()
        if n % round(DAY / self.step) == round(DAY / self.step) // 2:
            self.crash(
                (Role.STATS, Role.HEALTH_CHECKS, Role.EVENT_STREAMER, Role.DOCKER_GATEWAY)[
                    (n // round(DAY / self.step)) % 4
                ]
            )
            self.barrier()
            self.scheduler.advance(1.0)  # the supervisor's restart backoff
            self.barrier()
        return depth

    def settle(self) -> None:
        """A quiet moment to measure: every event fed has reached the cursor (the streamer's
        reader thread hands them over on its own time), the backend confirmed what it read, and
        the timers that came due meanwhile fired (which also drops the ones cancelled since)."""
        if self.event_feeds:
            assert self.event_feeds[-1].wait_handed(30), "the fed events never reached the streamer"
        self.barrier()
        self.pong()
        self.barrier()
        self.scheduler.advance(0)
        self.barrier()

    def sample(self, day: int, fired_before: Counter[str], max_inbox: int) -> DaySample:
        self.settle()
        gc.collect()
        fired = self.scheduler.fired.copy()
        fired.subtract(fired_before)
        conn = self.connection().proxy()
        return DaySample(
            day=day,
            pending=Counter(type(t.message).__name__ for t in self.scheduler.pending()),
            fired=+fired,
            max_inbox=max_inbox,
            objects=len(gc.get_objects()),
            sizes={
                "timers kept by the scheduler": len(self.scheduler.timers),
                "connection unconfirmed": int(conn.unconfirmed.get(timeout=5)),
                "events unconfirmed": len(self.cursor.unconfirmed()),
                "threads": threading.active_count(),
                "actors": len(self.refs()),
                "table entries held by actors": self.retained(),
            },
        )

    def run(self, days: int) -> list[DaySample]:
        samples: list[DaySample] = []
        steps_per_day = round(DAY / self.step)
        n = 0
        for day in range(1, days + 1):
            fired_before = self.scheduler.fired.copy()
            deepest = 0
            for _ in range(steps_per_day):
                n += 1
                deepest = max(deepest, self.one_step(n))
            samples.append(self.sample(day, fired_before, deepest))
        return samples
