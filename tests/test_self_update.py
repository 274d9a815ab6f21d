"""self_update without Docker: precheck, image references, the config subset, the hand-over
files, the old agent's flow against a fake Docker API, and the Connection's hand-over state."""

from __future__ import annotations

import json
import random
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pykka
import pytest

import agent_cli
import agent_config
from actors.base import Peers
from actors.connection import ConnectionActor
from actors.flows import self_update
from actors.flows.context import CLEANUP_FILE, UpdaterSettings
from actors.flows.self_update import (
    NATIVE_MODE_ERROR,
    OUTCOME_FILE,
    build_create_config,
    claim_outcome,
    precheck,
    read_outcome,
)
from actors.link.websocket import LinkSettings
from actors.rules.image_refs import ImageRef, parse_image_ref
from messages.common import Ping, RawJson, Secret
from messages.connection import (
    AttemptTimedOut,
    FrameReceived,
    HandOver,
    LinkOpened,
    ReaderStopped,
    ResumeAfterHandOver,
)
from messages.docker import DescribeHost, HostDescribed, HostInfo
from messages.outbound import EventOut
from messages.roles import Role
from messages.tokens import GetToken, TokenInfo
from messages.updates import SelfUpdate
from tests.support.fakes import FakeClock, FakeLink, FakeScheduler, ProbeHandle, make_ctx
from tests.support.hub_events import selfupdate_progress_problem

DIGEST = "sha256:" + "5e" * 32
REQUEST = SelfUpdate(
    request_id="r1", image="ghcr.io/darthnorse/dockmon-agent:1.1.3", version="1.1.3"
)
OWN = "0123456789ab"


def settings(tmp_path: Path, **kw: Any) -> UpdaterSettings:
    base: dict[str, Any] = {
        "docker_host": "unix:///nope.sock",
        "data_path": str(tmp_path),
        "own_container_id": OWN,
        "self_update_image": "127.0.0.1:5000/agent:v2",
        "handover_timeout": 30.0,
    }
    return UpdaterSettings(**{**base, **kw})


# --- precheck and capabilities (issue items 6, 7) ----------------------------------------------


def test_precheck_refuses_native_mode_and_a_missing_image(tmp_path: Path) -> None:
    assert precheck(settings(tmp_path, own_container_id=None), REQUEST) == NATIVE_MODE_ERROR
    assert "not running in a Docker container" in NATIVE_MODE_ERROR
    error = precheck(settings(tmp_path, self_update_image=None), REQUEST)
    assert "set SELF_UPDATE_IMAGE" in error and "Go agent" in error
    assert precheck(settings(tmp_path), REQUEST) == ""


@pytest.mark.parametrize(
    ("own_id", "image", "expected"),
    [
        ("0123456789ab", "r/agent:v2", True),
        (None, "r/agent:v2", False),
        ("0123456789ab", "", False),
    ],
)
def test_self_update_capability(own_id: str | None, image: str, expected: bool) -> None:
    env = {
        "DOCKMON_URL": "http://h",
        "REGISTRATION_TOKEN": "tok-selfupdate-unit",
        "DATA_PATH": "/data",
    }
    cfg = agent_config.load_config({**env, "SELF_UPDATE_IMAGE": image})
    caps = dict(agent_cli.identity(cfg, own_id).capabilities)
    assert caps["self_update"] is expected
    assert dict(agent_cli.capabilities())["self_update"] is False


# --- image references ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("agent", ImageRef("agent", None, None)),
        ("127.0.0.1:5000/agent:v2", ImageRef("127.0.0.1:5000/agent", "v2", None)),
        (f"ghcr.io/me/dm-agent@{DIGEST}", ImageRef("ghcr.io/me/dm-agent", None, DIGEST)),
        (f"reg.example/a/b:1.2@{DIGEST}", ImageRef("reg.example/a/b", "1.2", DIGEST)),
    ],
)
def test_parse_image_ref(text: str, ref: ImageRef) -> None:
    assert parse_image_ref(text) == ref
    assert str(ref) == text


@pytest.mark.parametrize("text", ["", "Agent", "a b", "agent:", "agent@sha256:12", "-a/b:1"])
def test_parse_image_ref_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid image reference"):
        parse_image_ref(text)


def test_pull_tag_prefers_the_digest() -> None:
    assert parse_image_ref("a").pull_tag == "latest"
    assert parse_image_ref("a:v2").pull_tag == "v2"
    assert parse_image_ref(f"a:v2@{DIGEST}").pull_tag == DIGEST


# --- the §7.3 config subset -------------------------------------------------------------------

OLD_IMAGE = {
    "Id": "sha256:old",
    "Config": {
        "Env": ["PATH=/opt/dockmon-agent/bin:/usr/bin", "DATA_PATH=/data"],
        "Labels": {"org.opencontainers.image.title": "dockmon-agent", "v": "1"},
        "Entrypoint": ["dockmon-agent"],
        "Cmd": None,
        "WorkingDir": "",
        "User": "",
    },
}


def old_container(**config: Any) -> dict[str, Any]:
    return {
        "Id": OWN + "f" * 52,
        "Name": "/dockmon-agent",
        "Image": "sha256:old",
        "Config": {
            "Hostname": OWN,
            "Domainname": "",
            "User": "",
            "AttachStdout": True,
            "Tty": False,
            "Env": [
                "PATH=/opt/dockmon-agent/bin:/usr/bin",
                "DATA_PATH=/data",
                "DOCKMON_URL=https://dockmon.example",
                "TZ=Europe/Zurich",
            ],
            "Labels": {"org.opencontainers.image.title": "dockmon-agent", "v": "mine", "x": "1"},
            "Entrypoint": ["dockmon-agent"],
            "Cmd": None,
            "WorkingDir": "",
            "StopTimeout": 20,
            "ExposedPorts": {"80/tcp": {}},
            "Healthcheck": {"Test": ["CMD", "old-check"]},
            **config,
        },
        "HostConfig": {
            "Binds": ["/var/run/docker.sock:/var/run/docker.sock:ro"],
            "NetworkMode": "bridge",
            "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
            "Memory": 268435456,
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m"}},
            "ContainerIDFile": "/tmp/cid",
            "AutoRemove": False,
            "KernelMemory": 0,
            "Dns": None,
        },
        "Mounts": [
            {
                "Type": "bind",
                "Source": "/var/run/docker.sock",
                "Destination": "/var/run/docker.sock",
            },
            {"Type": "volume", "Name": "3f9c" * 16, "Destination": "/data", "RW": True},
        ],
        "NetworkSettings": {"Networks": {"bridge": {}, "extra": {}}},
    }


def test_config_subset_copies_the_agents_own_config_minus_image_defaults() -> None:
    body = build_create_config(old_container(), OLD_IMAGE, "reg/agent:v2")
    assert body["Image"] == "reg/agent:v2"
    assert "Hostname" not in body  # Docker assigns a new one
    assert body["Env"] == ["DOCKMON_URL=https://dockmon.example", "TZ=Europe/Zurich"]
    assert body["Labels"] == {"v": "mine", "x": "1"}
    assert "Entrypoint" not in body and "Cmd" not in body  # the new image's apply
    assert body["StopTimeout"] == 20 and body["AttachStdout"] is True
    for absent in ("ExposedPorts", "Healthcheck", "User", "WorkingDir", "NetworkingConfig"):
        assert absent not in body
    host = body["HostConfig"]
    assert host["RestartPolicy"] == {"Name": "unless-stopped", "MaximumRetryCount": 0}
    assert host["NetworkMode"] == "bridge" and host["Memory"] == 268435456
    assert host["LogConfig"]["Config"] == {"max-size": "10m"}
    for absent in ("ContainerIDFile", "KernelMemory", "Dns"):
        assert absent not in host
    # the socket bind stays; the anonymous /data volume is carried over by name
    assert host["Binds"] == [
        "/var/run/docker.sock:/var/run/docker.sock:ro",
        f"{'3f9c' * 16}:/data",
    ]


def test_config_subset_keeps_what_the_user_overrode() -> None:
    container = old_container(
        Entrypoint=["/bin/sh", "-c"], Cmd=["exec dockmon-agent"], User="1000", WorkingDir="/w"
    )
    container["HostConfig"]["Binds"].append("agent-data:/data:rw")
    body = build_create_config(container, OLD_IMAGE, "reg/agent:v2")
    assert body["Entrypoint"] == ["/bin/sh", "-c"] and body["Cmd"] == ["exec dockmon-agent"]
    assert body["User"] == "1000" and body["WorkingDir"] == "/w"
    assert body["HostConfig"]["Binds"][-1] == "agent-data:/data:rw"  # no duplicate /data
    args_only = build_create_config(
        old_container(Cmd=["--log-level", "debug"]), OLD_IMAGE, "reg/agent:v2"
    )
    assert "Entrypoint" not in args_only and args_only["Cmd"] == ["--log-level", "debug"]


# --- hand-over files ----------------------------------------------------------------------------


def test_the_first_outcome_claimed_wins(tmp_path: Path) -> None:
    assert read_outcome(tmp_path) is None
    assert claim_outcome(tmp_path, "registered", "new") == "registered"
    assert claim_outcome(tmp_path, "aborted", "timeout") == "registered"
    assert stat.S_IMODE((tmp_path / OUTCOME_FILE).stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [OUTCOME_FILE]  # no temp files left


def test_racing_claims_agree(tmp_path: Path) -> None:
    def claim(data: Path, outcome: str, barrier: threading.Barrier, results: list[str]) -> None:
        barrier.wait()
        results.append(claim_outcome(data, outcome, ""))

    for round_ in range(30):
        data = tmp_path / str(round_)
        data.mkdir()
        results: list[str] = []
        barrier = threading.Barrier(2)
        threads = [
            threading.Thread(target=claim, args=(data, o, barrier, results))
            for o in ("registered", "aborted")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        assert len(results) == 2 and results[0] == results[1] == read_outcome(data)


# --- the old agent's flow against a fake Docker API -------------------------------------------


class FakeApi:
    def __init__(self, *, repo_digests: list[str], new_state: dict[str, Any]) -> None:
        self.repo_digests = repo_digests
        self.new_state = new_state
        self.calls: list[tuple[str, Any]] = []
        self.on_start: Callable[[str], object] = lambda cid: None

    def pull(self, name: str, tag: str, stream: bool, decode: bool) -> Iterator[dict[str, Any]]:
        self.calls.append(("pull", f"{name}:{tag}"))
        yield {"status": "Pulling"}

    def inspect_image(self, ref: str) -> dict[str, Any]:
        self.calls.append(("inspect_image", ref))
        if ref == "sha256:old":
            return OLD_IMAGE
        return {"Id": "sha256:new", "RepoDigests": self.repo_digests}

    def inspect_container(self, cid: str) -> dict[str, Any]:
        if cid == OWN:
            return old_container()
        if cid == "new" * 21 + "x":
            return {"State": self.new_state}
        raise docker.errors.NotFound("gone")

    def create_container_from_config(self, body: dict[str, Any], name: str) -> dict[str, str]:
        self.calls.append(("create", name))
        return {"Id": "new" * 21 + "x"}

    def start(self, cid: str) -> None:
        self.calls.append(("start", cid))
        self.on_start(cid)

    def remove_container(self, cid: str, force: bool, v: bool) -> None:
        assert not v, "volumes are shared with the other agent"
        self.calls.append(("remove", cid))


class FakeFlow:
    """What the flow uses of FlowContext; the clock jumps a second per wait."""

    def __init__(self, settings: UpdaterSettings, api: FakeApi) -> None:
        self.settings = settings
        self.api = api
        self.clock = FakeClock()
        self.events: list[dict[str, Any]] = []
        self.told: list[Any] = []
        self._peers = self
        self.waited = 0

        class _Cancelled:
            def wait(_self, seconds: float) -> bool:
                self.waited += 1
                self.clock.now += 1.0
                return False

        self.cancelled = _Cancelled()

    def client(self) -> FakeApi:
        return self.api

    def emit(self, command: str, payload: dict[str, Any]) -> None:
        assert command == "selfupdate_progress"
        assert selfupdate_progress_problem(payload) is None, payload
        self.events.append(payload)

    def tell(self, role: str, message: Any) -> bool:
        assert role == "connection"
        self.told.append(message)
        return True


def run_flow(flow: FakeFlow) -> None:
    self_update.run(flow, REQUEST)  # type: ignore[arg-type]


def test_a_pinned_digest_that_does_not_match_fails_the_pull(tmp_path: Path) -> None:
    api = FakeApi(repo_digests=[f"127.0.0.1:5000/agent@sha256:{'00' * 32}"], new_state={})
    flow = FakeFlow(settings(tmp_path, self_update_image=f"127.0.0.1:5000/agent@{DIGEST}"), api)
    run_flow(flow)
    assert api.calls[0] == ("pull", f"127.0.0.1:5000/agent:{DIGEST}")
    assert [e["stage"] for e in flow.events] == ["pull", "pull"]
    assert "does not have the pinned digest" in flow.events[-1]["error"]
    assert flow.told == [] and not any(c[0] == "create" for c in api.calls)


def test_a_new_agent_that_never_registers_is_removed_and_v1_resumes(tmp_path: Path) -> None:
    api = FakeApi(repo_digests=[f"127.0.0.1:5000/agent@{DIGEST}"], new_state={"Running": True})
    flow = FakeFlow(settings(tmp_path, self_update_image=f"127.0.0.1:5000/agent@{DIGEST}"), api)
    written: list[dict[str, Any]] = []
    cleanup = tmp_path / CLEANUP_FILE
    api.on_start = lambda cid: written.append(
        {**json.loads(cleanup.read_text()), "mode": stat.S_IMODE(cleanup.stat().st_mode)}
    )
    run_flow(flow)
    # cleanup.json existed, 0600, before the new container was started
    assert written and written[0]["temp_name"] == "dockmon-agent-update"
    assert written[0]["mode"] == 0o600 and written[0]["new_container_id"] == "new" * 21 + "x"
    assert written[0]["old_container_id"] == OWN and written[0]["original_name"] == "dockmon-agent"
    assert [e["stage"] for e in flow.events] == ["pull", "inspect", "create", "start", "health"]
    assert "did not register with DockMon within 30s" in flow.events[-1]["error"]
    assert 29 <= flow.waited <= 61
    assert ("remove", "new" * 21 + "x") in api.calls
    assert [type(m) for m in flow.told] == [HandOver, ResumeAfterHandOver]
    assert list(tmp_path.iterdir()) == []  # hand-over files cleared


def test_a_registered_new_agent_is_left_alone(tmp_path: Path) -> None:
    api = FakeApi(repo_digests=[], new_state={"Running": True})
    flow = FakeFlow(settings(tmp_path), api)
    api.on_start = lambda cid: claim_outcome(tmp_path, "registered", cid)
    run_flow(flow)
    assert [e["stage"] for e in flow.events] == ["pull", "inspect", "create", "start"]
    assert not any(c[0] == "remove" for c in api.calls)
    assert [type(m) for m in flow.told] == [HandOver]  # stays idle; the new agent removes it
    assert (tmp_path / CLEANUP_FILE).exists()


def test_a_new_container_that_exits_fails_at_once(tmp_path: Path) -> None:
    api = FakeApi(repo_digests=[], new_state={"Running": False, "Status": "exited", "ExitCode": 3})
    flow = FakeFlow(settings(tmp_path), api)
    run_flow(flow)
    assert flow.waited == 0
    assert "exited (exit code 3)" in flow.events[-1]["error"]
    assert [type(m) for m in flow.told] == [HandOver, ResumeAfterHandOver]


# --- the Connection's side of the hand-over ----------------------------------------------------


class FinishingLink(FakeLink):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.finished = False

    def finish(self) -> None:
        self.finished = True


AUTH_OK = '{"type":"auth_success","agent_id":"A1","host_id":"H1","permanent_token":"A1"}'


@pytest.fixture
def conn() -> Iterator[tuple[pykka.ActorRef[Any], FakeScheduler, ProbeHandle]]:
    FakeLink.instances.clear()
    clock = FakeClock()
    scheduler = FakeScheduler(clock)
    peers = Peers()
    tokens = ProbeHandle(
        lambda m: (
            TokenInfo(token=Secret("A1"), kind="permanent", source="file")
            if isinstance(m, GetToken)
            else None
        )
    )
    gateway = ProbeHandle()
    peers.set(Role.TOKEN_STORE, tokens.ref)
    peers.set(Role.DOCKER_GATEWAY, gateway.ref)
    ref = ConnectionActor.start(
        make_ctx(peers, scheduler, clock, child_id="connection"),
        settings=LinkSettings(url="ws://127.0.0.1:9/api/agent/ws"),
        identity=agent_cli.identity(
            agent_config.load_config(
                {
                    "DOCKMON_URL": "http://h",
                    "REGISTRATION_TOKEN": "tok-selfupdate-unit",
                    "DATA_PATH": "/data",
                }
            )
        ),
        reconnect_initial=1.0,
        reconnect_max=8.0,
        link_subscribers=agent_cli.fanouts().link,
        link_factory=FinishingLink,  # type: ignore[arg-type]
        rng=random.Random(1),
    )
    yield ref, scheduler, gateway
    pykka.ActorRegistry.stop_all()


def connect(ref: pykka.ActorRef[Any], gateway: ProbeHandle) -> FinishingLink:
    ask = gateway.expect(DescribeHost)
    ref.tell(HostDescribed(attempt=ask.attempt, info=HostInfo(engine_id="E", daemon_name="d")))
    ref.ask(Ping(), timeout=3)
    link = FakeLink.instances[-1]
    assert isinstance(link, FinishingLink)
    ref.tell(LinkOpened(generation=link.generation))
    ref.tell(FrameReceived(generation=link.generation, data=AUTH_OK))
    ref.ask(Ping(), timeout=3)
    return link


def state(ref: pykka.ActorRef[Any]) -> str:
    return str(ref.proxy().state.get(timeout=3))


def test_hand_over_flushes_closes_and_stays_idle_until_resumed(
    conn: tuple[pykka.ActorRef[Any], FakeScheduler, ProbeHandle],
) -> None:
    ref, scheduler, gateway = conn
    link = connect(ref, gateway)
    ref.tell(EventOut(command="selfupdate_progress", payload=RawJson.of({"stage": "start"})))
    ref.tell(HandOver())
    ref.ask(Ping(), timeout=3)
    assert "selfupdate_progress" in link.sent[-1] and link.finished and not link.closed
    assert state(ref) == "handing_over"
    echo = "closed by server: 1000 agent hand-over"
    ref.tell(ReaderStopped(generation=link.generation, reason=echo, echoed=True))
    ref.ask(Ping(), timeout=3)
    assert state(ref) == "handed_over" and link.closed
    # no reconnect, however long it stays idle; events wait in the outbox
    ref.tell(EventOut(command="selfupdate_progress", payload=RawJson.of({"stage": "health"})))
    for _ in range(120):
        scheduler.advance(1.0)
    ref.ask(Ping(), timeout=3)
    assert len(FakeLink.instances) == 1 and state(ref) == "handed_over"
    assert not [m for m in gateway.received if isinstance(m, DescribeHost)]

    ref.tell(ResumeAfterHandOver())
    new_link = connect(ref, gateway)
    assert state(ref) == "connected"
    assert any('"health"' in s for s in new_link.sent)  # delivered after the new auth
    assert not any('"start"' in s for s in new_link.sent)  # the close echo confirmed it


def test_a_server_close_during_the_hand_over_is_no_echo_and_confirms_nothing(
    conn: tuple[pykka.ActorRef[Any], FakeScheduler, ProbeHandle],
) -> None:
    """The new agent registering with our token makes the backend close our socket itself
    (1000 "New connection established", PROTOCOL §2.5): that close crossed ours, the backend
    stopped reading when it sent it, so what it had not read goes again on the next link."""
    ref, _, gateway = conn
    link = connect(ref, gateway)
    ref.tell(EventOut(command="selfupdate_progress", payload=RawJson.of({"stage": "start"})))
    ref.tell(HandOver())
    closed = "closed by server: 1000 New connection established"
    ref.tell(ReaderStopped(generation=link.generation, reason=closed))
    ref.ask(Ping(), timeout=3)
    assert state(ref) == "handed_over" and link.closed
    ref.tell(ResumeAfterHandOver())
    new_link = connect(ref, gateway)
    assert any('"start"' in s for s in new_link.sent)  # not confirmed: sent again


def test_hand_over_without_a_close_echo_times_out_into_idle(
    conn: tuple[pykka.ActorRef[Any], FakeScheduler, ProbeHandle],
) -> None:
    ref, scheduler, gateway = conn
    link = connect(ref, gateway)
    ref.tell(HandOver())
    ref.ask(Ping(), timeout=3)
    assert scheduler.pending(AttemptTimedOut)
    scheduler.advance(11.0)
    ref.ask(Ping(), timeout=3)
    assert state(ref) == "handed_over" and link.closed
    assert len(FakeLink.instances) == 1


# --- on_connected: the new agent finishes the hand-over ----------------------------------------

OLD_ID = "fedcba987654"


class NewSideApi(FakeApi):
    def __init__(self) -> None:
        super().__init__(repo_digests=[], new_state={})
        self.name = "/dockmon-agent-update"

    def inspect_container(self, cid: str) -> dict[str, Any]:
        assert cid == OWN
        return {"Name": self.name}

    def stop(self, cid: str, timeout: int) -> None:
        self.calls.append(("stop", cid))

    def rename(self, cid: str, name: str) -> None:
        self.calls.append(("rename", (cid, name)))
        self.name = "/" + name


def write_cleanup(data: Path, *, new_id: str, old_id: str) -> None:
    (data / CLEANUP_FILE).write_text(
        json.dumps(
            {
                "old_container_id": old_id,
                "old_container_name": "dockmon-agent",
                "new_container_id": new_id,
                "temp_name": "dockmon-agent-update",
                "original_name": "dockmon-agent",
                "image": "reg/agent:v2",
            }
        )
    )


def test_new_agent_claims_removes_the_old_one_and_takes_its_name(tmp_path: Path) -> None:
    write_cleanup(tmp_path, new_id=OWN + "0" * 52, old_id=OLD_ID)
    api = NewSideApi()
    flow = FakeFlow(settings(tmp_path), api)
    self_update.on_connected(flow)  # type: ignore[arg-type]
    assert api.calls == [
        ("stop", OLD_ID),
        ("remove", OLD_ID),
        ("rename", (OWN, "dockmon-agent")),
    ]
    assert [e["stage"] for e in flow.events] == ["health", "complete"]
    assert list(tmp_path.iterdir()) == [] and flow.told == []
    # nothing left to do on the next registration
    self_update.on_connected(flow)  # type: ignore[arg-type]
    assert len(api.calls) == 3


def test_new_agent_idles_when_the_old_one_gave_up(tmp_path: Path) -> None:
    write_cleanup(tmp_path, new_id=OWN + "0" * 52, old_id=OLD_ID)
    claim_outcome(tmp_path, "aborted", "timeout")
    api = NewSideApi()
    flow = FakeFlow(settings(tmp_path), api)
    self_update.on_connected(flow)  # type: ignore[arg-type]
    assert api.calls == [] and flow.events == []
    assert [type(m) for m in flow.told] == [HandOver]


def test_old_agent_restarted_mid_hand_over_removes_the_new_one(tmp_path: Path) -> None:
    new_id = "abc" * 21 + "d"
    write_cleanup(tmp_path, new_id=new_id, old_id=OWN)
    api = NewSideApi()
    flow = FakeFlow(settings(tmp_path), api)
    self_update.on_connected(flow)  # type: ignore[arg-type]
    assert api.calls == [("remove", new_id)]
    assert flow.events[-1]["stage"] == "health" and "restarted" in flow.events[-1]["error"]
    assert list(tmp_path.iterdir()) == []
